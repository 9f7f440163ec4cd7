"""Where a CUDA model's update travels, decided from what each side reports: pure functions.

The distributed transport moves a model's flat buffer to each worker either GPU to GPU over
NCCL or through a copy in host memory. The choice depends only on facts the two sides report,
so it is made here, without a GPU, and tested on any machine
(``tests/weightsync/test_transport_routing.py``); the transport only gathers the facts (the
trainer's devices, each worker's GPU UUID from its hello) and carries the decision out:

* :func:`staging_device`: where the trainer stages the update, from the devices its tensors are
  on and whether it may use NCCL;
* :func:`route`: how one worker gets a buffer, from the buffer's GPU (its UUID; None: host
  memory) and the GPU the worker receives on (its UUID; None: it takes host memory);
* :func:`nccl_keys_done`: when a link's NCCL rendezvous keys may leave the trainer's store;
* :class:`WarnOnce`: each fallback to host memory is warned about once per transport.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Iterable

import torch

#: Why a trainer stages GPU weights in host memory (the warning a user sees once).
HOST_STAGING_WARNING = (
    "the model lives on the GPU but this trainer cannot send it over NCCL (no NCCL, "
    "backend='gloo', or its tensors are on several devices): every update is copied "
    "through host memory"
)


class Route(enum.Enum):
    """How one worker receives one update."""

    HOST = "host"  #: the buffer is in host memory: it crosses on the gloo link as it is
    NCCL = "nccl"  #: GPU to GPU over the link's NCCL group
    HOST_COPY = "host copy"  #: a GPU buffer copied to host memory first, then over gloo


def staging_device(devices: Iterable[torch.device], use_nccl: bool) -> tuple[torch.device, bool]:
    """Where the trainer stages weights whose tensors are on ``devices``, and whether that is a
    fallback to host memory the user must hear of: their GPU when they all are on one and NCCL
    may carry them, else host memory (a fallback when any of them is on a GPU)."""
    devices = set(devices)
    on_gpu = any(d.type == "cuda" for d in devices)
    if on_gpu and len(devices) == 1 and use_nccl:
        return devices.pop(), False
    return torch.device("cpu"), on_gpu


def route(buffer_gpu: str | None, worker_gpu: str | None, use_nccl: bool) -> Route:
    """How a worker receiving on ``worker_gpu`` gets a buffer on ``buffer_gpu`` (GPU UUIDs;
    None: host memory). NCCL needs a GPU on both ends, and refuses two ranks on one GPU: a worker
    on the trainer's own GPU gets a host copy, as does one receiving in host memory."""
    if buffer_gpu is None:
        return Route.HOST
    if use_nccl and worker_gpu is not None and worker_gpu != buffer_gpu:
        return Route.NCCL
    return Route.HOST_COPY


def routes(
    buffer_gpu: str | None, worker_gpus: dict[int, str | None], use_nccl: bool
) -> dict[int, Route]:
    """:func:`route` for each worker of ``worker_gpus`` (worker id -> the UUID it reported)."""
    return {w: route(buffer_gpu, gpu, use_nccl) for w, gpu in worker_gpus.items()}


def nccl_keys_done(rendezvous_version: int | None, answered_version: int, received: bool) -> bool:
    """Whether a link's NCCL rendezvous keys may be deleted from the store: the first update sent
    over NCCL was ``rendezvous_version`` (None: no NCCL rendezvous is pending), and the worker
    has now ``received`` (busy or applied, not refused) ``answered_version``, so both ranks have
    joined the group."""
    return received and rendezvous_version is not None and answered_version >= rendezvous_version


class WarnOnce:
    """Warnings issued at most once per key (per transport: a user hears of each fallback once,
    not at every update)."""

    def __init__(self) -> None:
        self.issued: set[str] = set()

    def __call__(self, key: str, message: str, *, stacklevel: int = 2) -> bool:
        """Warn ``message`` unless ``key`` was warned about already; True when it warned."""
        if key in self.issued:
            return False
        self.issued.add(key)
        warnings.warn(message, stacklevel=stacklevel + 1)
        return True
