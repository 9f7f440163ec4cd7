"""Transports move weights between processes; they know nothing of models.

Each backend implements the two protocols of :mod:`weightsync.transports.base`, from shared
pieces that each do one job (see the README's architecture section):

* :mod:`~weightsync.transports.link`: one end of a trainer-worker pipe (:class:`MPTransport`),
  the control link of the pipe-based backends;
* :mod:`~weightsync.transports.workers`: which workers are live, removed or dead (their
  processes watched), and the one error naming every worker a wait failed on;
* :mod:`~weightsync.transports.staging`: the trainer's staging buffers and their retirement;
* :mod:`~weightsync.transports.routing`: where a CUDA update travels (NCCL or a host copy);
* :mod:`~weightsync.transports.c10d`: ``torch.distributed`` building blocks (a store, two-rank
  links, plain messages), public: the experiment framework builds its rollout channel from them.
"""

from weightsync.transports.base import ReceiverTransport, SenderTransport, TransportBackend, Update
from weightsync.transports.c10d import (
    Link,
    PendingSends,
    as_bytes,
    decode_layout,
    empty_header,
    encode_layout,
    header,
    nccl_usable,
    open_store,
)
from weightsync.transports.distributed import DistributedReceiver, DistributedSender
from weightsync.transports.link import MPTransport
from weightsync.transports.null import NullReceiver, NullSender, NullTransport
from weightsync.transports.pipe import PipeBroadcast, PipeReader
from weightsync.transports.shared_mem import SharedMemReader, SharedMemTransport, SnapshotRing
from weightsync.transports.workers import ProcessHandle

__all__ = [
    "DistributedReceiver",
    "DistributedSender",
    "Link",
    "MPTransport",
    "NullReceiver",
    "NullSender",
    "NullTransport",
    "PendingSends",
    "PipeBroadcast",
    "PipeReader",
    "ProcessHandle",
    "ReceiverTransport",
    "SenderTransport",
    "SharedMemReader",
    "SharedMemTransport",
    "SnapshotRing",
    "TransportBackend",
    "Update",
    "as_bytes",
    "decode_layout",
    "empty_header",
    "encode_layout",
    "header",
    "nccl_usable",
    "open_store",
]
