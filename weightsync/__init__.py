"""weightsync: keep the weights of inference workers in step with a trainer.

The public API follows TorchRL's ``torchrl.weight_update``: schemes (``none``, ``pipe``,
``shared-mem``) compose a :class:`WeightStrategy` (the weight format) with a transport, and hand
out a :class:`WeightSender` (trainer) and :class:`WeightReceiver` (each worker).
"""

# The compatibility layers stand beside the core: importing them adds TorchRL's calls to the
# core's classes (TorchRL's collector protocol, its legacy calls); the core never imports them.
from weightsync import legacy  # noqa: F401
from weightsync.endpoints import WeightReceiver, WeightSender
from weightsync.errors import (
    ModelPathError,
    NonFiniteWeightsError,
    PeerDiedError,
    SchemeMismatchError,
    SharedMemoryError,
    SyncTimeoutError,
    UnmaterializedWeightsError,
    WeightMismatchError,
    WeightSyncError,
    WorkerRejectedError,
)
from weightsync.group import ModelGroup
from weightsync.paths import resolve_model_id
from weightsync.schemes import (
    DistributedWeightSyncScheme,
    MultiProcessWeightSyncScheme,
    NoWeightSyncScheme,
    SharedMemWeightSyncScheme,
    WeightSyncScheme,
)
from weightsync.strategy import WeightStrategy
from weightsync.torchrl import register_with_torchrl
from weightsync.transports import MPTransport, SharedMemTransport, TransportBackend

__all__ = [
    "DistributedWeightSyncScheme",
    "MPTransport",
    "ModelGroup",
    "ModelPathError",
    "MultiProcessWeightSyncScheme",
    "NoWeightSyncScheme",
    "NonFiniteWeightsError",
    "PeerDiedError",
    "SchemeMismatchError",
    "SharedMemTransport",
    "SharedMemWeightSyncScheme",
    "SharedMemoryError",
    "SyncTimeoutError",
    "TransportBackend",
    "UnmaterializedWeightsError",
    "WeightMismatchError",
    "WeightReceiver",
    "WeightSender",
    "WeightStrategy",
    "WeightSyncError",
    "WeightSyncScheme",
    "WorkerRejectedError",
    "register_with_torchrl",
    "resolve_model_id",
]
