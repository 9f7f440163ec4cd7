"""Transports move weights between processes; they know nothing of models.

Each backend implements the two protocols of :mod:`weightsync.transports.base`.
"""

from weightsync.transports.base import ReceiverTransport, SenderTransport, TransportBackend, Update
from weightsync.transports.null import NullReceiver, NullSender, NullTransport
from weightsync.transports.pipe import MPTransport, PipeBroadcast, PipeReader
from weightsync.transports.shared_mem import SharedMemReader, SharedMemTransport, SnapshotRing

__all__ = [
    "MPTransport",
    "NullReceiver",
    "NullSender",
    "NullTransport",
    "PipeBroadcast",
    "PipeReader",
    "ReceiverTransport",
    "SenderTransport",
    "SharedMemReader",
    "SharedMemTransport",
    "SnapshotRing",
    "TransportBackend",
    "Update",
]
