"""Weight-sync schemes, one module each; ``WeightSyncScheme.from_backend(name)`` picks one."""

from weightsync.schemes.base import WeightSyncScheme
from weightsync.schemes.distributed import DistributedWeightSyncScheme
from weightsync.schemes.none import NoWeightSyncScheme
from weightsync.schemes.pipe import MultiProcessWeightSyncScheme
from weightsync.schemes.ray import RayWeightSyncScheme
from weightsync.schemes.shared_mem import SharedMemWeightSyncScheme

__all__ = [
    "DistributedWeightSyncScheme",
    "MultiProcessWeightSyncScheme",
    "NoWeightSyncScheme",
    "RayWeightSyncScheme",
    "SharedMemWeightSyncScheme",
    "WeightSyncScheme",
]
