"""``distributed``: weights over private ``torch.distributed`` links, workers on any machine."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from weightsync.launch import LaunchInfo
from weightsync.schemes.base import WeightSyncScheme
from weightsync.strategy import DEFAULT_FORMAT, WeightFormat
from weightsync.transports.c10d import nccl_usable
from weightsync.transports.distributed import DistributedReceiver, DistributedSender

#: Heartbeats a worker misses before it counts the trainer as lost.
SILENT_HEARTBEATS = 4


class DistributedWeightSyncScheme(WeightSyncScheme, backend="distributed"):
    """Send weights from the trainer to workers on other machines over ``torch.distributed``.

    The trainer runs a private ``TCPStore`` on ``host:port`` (listening there only) and one
    private gloo link per worker (never the default process group, so a job's own
    ``torch.distributed`` use is untouched). Sends are asynchronous; each worker's receiving
    thread takes an update while the worker acts, and ``receive()`` adopts it without a copy. A
    dead worker breaks only its own link: the trainer names it and goes on with the others
    (``get_sender().remove_workers([...])``).

    Args:
        num_workers: how many workers join (worker ids ``0..num_workers-1``).
        host: where the trainer's store listens, as every worker reaches it (None:
            ``127.0.0.1``).
        port: the store's port; 0 (or None) lets the trainer pick a free one (then pickle the
            scheme to the workers after ``init_on_sender``, which fills it in).
        bind: this process's own address or network interface for its links; None (default):
            torch's choice, honouring ``GLOO_SOCKET_IFNAME``. ``init_on_receiver(bind=...)``
            sets it per worker.
        join_timeout: seconds to reach the store and join (default: ``timeout``).
        heartbeat: seconds between the trainer's heartbeats on an idle link; a worker that hears
            nothing, heartbeats included, for four of them counts the trainer as lost (its
            host went down without closing its sockets): ``receive()`` raises PeerDiedError.
            0: no heartbeat, workers wait for the trainer forever.
        worker_id: this worker's index, if known when built (``from_env`` sets it).
        backend: how GPU weights travel (TorchRL's argument). None (default): a CUDA model's
            buffer stays on its GPU and crosses over NCCL to every worker whose model is on a
            GPU; others (and every worker when this process has no NCCL) get a copy through
            host memory, with a warning. ``"nccl"``: the same, but an error where NCCL is
            missing. ``"gloo"``: always through host memory. Control messages, and CPU models,
            always travel over gloo.
        strategy, timeout, reject_non_finite, bind_source, sync: see WeightSyncScheme.

    Example (one line per process, under ``torchrun --nproc-per-node=3 script.py``)::

        scheme = DistributedWeightSyncScheme.from_env()
        if scheme.worker_id is None:                           # rank 0: the trainer
            scheme.init_on_sender("policy", model=policy)
        else:                                                  # ranks 1, 2: workers
            scheme.init_on_receiver("policy", model=policy)
        scheme.connect()
    """

    receiver_keywords = (*WeightSyncScheme.receiver_keywords, "bind")

    def __init__(
        self,
        num_workers: int = 1,
        host: str | None = "127.0.0.1",
        port: int | None = 0,
        strategy: WeightFormat = DEFAULT_FORMAT,
        *,
        bind: str | None = None,
        join_timeout: float | None = None,
        heartbeat: float = 5.0,
        worker_id: int | None = None,
        backend: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(strategy, **kwargs)
        if backend not in (None, "gloo", "nccl"):
            raise ValueError(
                f"DistributedWeightSyncScheme: backend={backend!r} is not one of None (NCCL for "
                "GPU weights where available), 'nccl' or 'gloo'"
            )
        self.backend = backend
        self.num_workers = num_workers
        self.host = host or "127.0.0.1"
        self.port = port or 0
        self.bind = bind
        self.join_timeout = self.timeout if join_timeout is None else join_timeout
        if heartbeat < 0:
            raise ValueError(f"heartbeat must be >= 0 seconds (0: none), got {heartbeat}")
        self.heartbeat = heartbeat
        self.worker_id = worker_id

    @classmethod
    def from_env(
        cls, port_offset: int = 1, environ: dict[str, str] | None = None, **kwargs: Any
    ) -> DistributedWeightSyncScheme:
        """A scheme for this process of a torchrun or Slurm launch (see :mod:`weightsync.launch`).

        Rank 0 is the trainer, rank ``r`` worker ``r - 1``; the store listens on the master
        address at ``MASTER_PORT + port_offset`` (torchrun's own store holds ``MASTER_PORT``).
        """
        info = LaunchInfo.from_environ(environ)
        if info is None:
            raise ValueError(
                "DistributedWeightSyncScheme.from_env() found no launcher: set RANK, WORLD_SIZE, "
                "MASTER_ADDR and MASTER_PORT (torchrun does) or run under Slurm (SLURM_PROCID, "
                "SLURM_NTASKS), or build the scheme with num_workers/host/port"
            )
        if info.world_size < 2:
            raise ValueError(
                f"the launch has world size {info.world_size}: the distributed scheme needs a "
                "trainer and at least one worker (launch 2 or more processes)"
            )
        return cls(
            num_workers=info.world_size - 1,
            host=info.master_addr,
            port=info.master_port + port_offset,
            worker_id=info.worker_id,
            **kwargs,
        )

    def init_on_receiver(self, model_id: str, context: Any = None, **kwargs: Any) -> None:
        """Worker set-up; ``worker_id=`` (or ``context.worker_id``, or ``from_env``'s) and an
        optional ``bind=`` address or interface for this worker."""
        self.worker_id = kwargs.pop("worker_id", getattr(context, "worker_id", self.worker_id))
        self.bind = kwargs.pop("bind", self.bind)
        super().init_on_receiver(model_id, context, **kwargs)

    def _use_nccl(self) -> bool:
        """Whether GPU weights may cross over NCCL from/to this process."""
        if self.backend == "gloo":
            return False
        if self.backend == "nccl" and not nccl_usable():
            raise RuntimeError(
                "DistributedWeightSyncScheme(backend='nccl'): this process has no CUDA device or "
                "its torch has no NCCL; use backend=None (NCCL where available) or 'gloo'"
            )
        return nccl_usable()

    def _build_sender_transport(
        self, pipes: list | None, num_workers: int | None
    ) -> DistributedSender:
        transport = DistributedSender(
            num_workers or self.num_workers, self.host, self.port, self.timeout,
            join_timeout=self.join_timeout, bind=self.bind, use_nccl=self._use_nccl(),
            heartbeat=self.heartbeat,
        )  # fmt: skip
        self.num_workers, self.port = len(transport.links), transport.port
        return transport

    def _build_receiver_transport(self, pipe: Any) -> DistributedReceiver:
        if self.worker_id is None or not 0 <= self.worker_id < self.num_workers:
            raise ValueError(
                "the distributed scheme needs this worker's index: init_on_receiver(model_id, "
                f"model=..., worker_id=i) with 0 <= i < {self.num_workers}, got "
                f"worker_id={self.worker_id}"
            )
        if not self.port:
            raise ValueError(
                "the scheme does not know the trainer's port: pickle it to the worker after "
                "init_on_sender() (which picks the port), or build it with port=<the port>"
            )
        transport = DistributedReceiver(
            self.worker_id, self.host, self.port, join_timeout=self.join_timeout, bind=self.bind,
            device=_gpu_of(self._model) if self._use_nccl() else None,
            silence=SILENT_HEARTBEATS * self.heartbeat or None,
        )  # fmt: skip
        transport.model_id = self.model_id
        return transport

    def connect(self, timeout: float | None = None) -> None:
        """Trainer: wait until every worker joined, then send the initial weights. Worker:
        wait for them."""
        if self.role == "sender":
            self._transport.rendezvous()
        elif timeout is None:  # the trainer sends once every worker has joined
            timeout = self.join_timeout + self.timeout
        super().connect(timeout)


def _gpu_of(model: Any) -> torch.device | None:
    """The one GPU ``model``'s tensors live on (updates are received there), else None."""
    if not isinstance(model, nn.Module):
        return None
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    return devices.pop() if len(devices) == 1 and next(iter(devices)).type == "cuda" else None
