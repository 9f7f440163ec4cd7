"""``distributed``: weights broadcast over a private ``torch.distributed`` gloo group."""

from __future__ import annotations

from typing import Any

from weightsync.schemes.base import WeightSyncScheme
from weightsync.transports.distributed import DistributedBroadcast, DistributedReader


class DistributedWeightSyncScheme(WeightSyncScheme, backend="distributed"):
    """Broadcast weights from the trainer (rank 0) to workers on any machine.

    The scheme builds its own ``TCPStore`` and gloo process group (never the default group), so it
    coexists with a job's own ``torch.distributed`` use. ``connect()`` is the rendez-vous: it
    blocks until all ``num_workers`` workers have joined.

    Args:
        num_workers: how many workers join (ranks 1..num_workers).
        host: the trainer's address, as workers reach it (``"127.0.0.1"`` on one machine).
        port: the trainer's store port; 0 lets the trainer pick a free one when it initialises,
            so pickle the scheme to the workers *after* ``init_on_sender`` (it then carries the
            port), or choose a fixed port for workers started elsewhere.
        backend: the ``torch.distributed`` backend (TorchRL's argument); only ``"gloo"``, which
            moves the CPU flat buffer.
        strategy, timeout, reject_non_finite, bind_source, sync: see WeightSyncScheme.

    Workers call ``init_on_receiver(model_id, model=..., worker_id=i)`` with ``i`` in
    ``range(num_workers)``. A dead worker breaks the group (collectives need every rank): the
    trainer's ``send`` raises within ``timeout`` and the job must be restarted.
    """

    def __init__(
        self,
        num_workers: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        strategy: str = "state_dict",
        *,
        backend: str = "gloo",
        **kwargs: Any,
    ):
        super().__init__(strategy, **kwargs)
        if backend != "gloo":
            raise ValueError(
                f"DistributedWeightSyncScheme moves weights over gloo; backend={backend!r} is not "
                "supported (use backend='gloo')"
            )
        self.distributed_backend = backend
        self.num_workers = num_workers
        self.host = host
        self.port = port
        self._worker_id: int | None = None

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        self._worker_id = kwargs.get("worker_id", getattr(context, "worker_id", None))
        super().init_on_receiver(model_id, context, **kwargs)

    def _build_sender_transport(
        self, pipes: list | None, num_workers: int | None
    ) -> DistributedBroadcast:
        transport = DistributedBroadcast(
            num_workers or self.num_workers, self.host, self.port, self.timeout
        )
        self.num_workers, self.port = transport.num_workers, transport.port
        return transport

    def _build_receiver_transport(self, pipe: Any) -> DistributedReader:
        if self._worker_id is None or not 0 <= self._worker_id < self.num_workers:
            raise ValueError(
                "the distributed scheme needs this worker's index: "
                f"init_on_receiver(model_id, model=..., worker_id=i) with 0 <= i < "
                f"{self.num_workers}, got worker_id={self._worker_id}"
            )
        if not self.port:
            raise ValueError(
                "the scheme does not know the trainer's port: pickle it to the worker after "
                "init_on_sender() (which picks the port), or build it with port=<fixed port>"
            )
        return DistributedReader(
            self._worker_id, self.num_workers, self.host, self.port, self.timeout
        )

    def _legacy_transport(self, pipe: Any) -> DistributedBroadcast:
        return DistributedBroadcast(self.num_workers, self.host, self.port, self.timeout)

    def connect(self, timeout: float | None = None) -> None:
        """Join the process group (blocking until every rank is there), then sync as usual."""
        self._transport.rendezvous()
        super().connect(timeout)
