"""A Ray actor that holds a model kept in step by a weightsync ray scheme (tests only)."""

from __future__ import annotations

from typing import Any

import ray
import torch


class SyncedModel:
    """One worker: its model, built from ``make_model``, joins the scheme as ``worker_id``."""

    def __init__(self, make_model: Any):
        torch.manual_seed(1)
        self.model = make_model()
        self.scheme: Any = None

    def join(self, scheme: Any, worker_id: int) -> int:
        self.scheme = scheme
        scheme.init_on_receiver("policy", model=self.model, worker_id=worker_id)
        scheme.connect()
        return scheme.get_receiver().version

    def receive(self, timeout: float = 0.0) -> int:
        self.scheme.receive(timeout)
        return self.scheme.get_receiver().version

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}

    def reads_object_store(self) -> bool:
        """Whether every parameter is a view into the object-store buffer of the version held."""
        array = ray.get(self.scheme._transport._using)
        start, end = array.ctypes.data, array.ctypes.data + array.nbytes
        return all(start <= p.data_ptr() < end for p in self.model.parameters())

    def closed(self) -> bool:
        return self.scheme.closed

    def leave(self) -> None:
        self.scheme.shutdown()

    def rebuild(self, make_model: Any) -> None:
        """A new model (joins the next scheme)."""
        torch.manual_seed(1)
        self.model = make_model()

    def node(self) -> str:
        """The Ray node this actor runs on."""
        return ray.get_runtime_context().get_node_id()
