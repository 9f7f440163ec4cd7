"""Transports move weights between processes; they know nothing of models."""

from weightsync.transports.base import TransportBackend, Update
from weightsync.transports.pipe import MPTransport, PipeBroadcast, PipeReader
from weightsync.transports.shared_mem import SharedMemReader, SharedMemTransport, SnapshotRing

__all__ = [
    "MPTransport",
    "PipeBroadcast",
    "PipeReader",
    "SharedMemReader",
    "SharedMemTransport",
    "SnapshotRing",
    "TransportBackend",
    "Update",
]
