"""The ``sync`` and ``strategy`` config groups: one typed schema per option, and the builder.

Each ``sync`` option has its own dataclass, registered in Hydra's ConfigStore as
``sync_schema/<name>`` by :func:`sync_schema`, which its YAML file extends
(``defaults: [/sync_schema/<name>@_here_]``). So each scheme's own arguments are set and checked
from the command line (``sync=shared-mem sync.num_buffers=4``; ``sync.num_buffers=four`` or a
key the scheme does not take fails while Hydra composes). A new option is one dataclass here (or
anywhere imported before composing) and one YAML file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig

from experiments.common.config import from_constructor, option_schema, plain
from weightsync import (
    DistributedWeightSyncScheme,
    SharedMemWeightSyncScheme,
    WeightStrategy,
    WeightSyncScheme,
)

SYNC_SCHEMA_GROUP = "sync_schema"
Schema = TypeVar("Schema", bound=type)


def sync_schema(name: str) -> Callable[[Schema], Schema]:
    """Register the decorated dataclass as the schema of option ``name`` of the ``sync`` group."""
    return option_schema(SYNC_SCHEMA_GROUP, name)


@dataclass
class SyncConfig:
    """What every scheme takes: its ``timeout`` (seconds any blocking wait on a worker may take
    before it counts as failed) and ``reject_non_finite`` (refuse to publish weights holding NaN
    or inf). Defaults are the library's."""

    _target_: str = MISSING
    timeout: float = from_constructor(WeightSyncScheme, "timeout")
    reject_non_finite: bool = from_constructor(WeightSyncScheme, "reject_non_finite")


@sync_schema("none")
@dataclass
class NoneSyncConfig(SyncConfig):
    """``sync=none``: workers keep their initial weights."""

    _target_: str = "weightsync.NoWeightSyncScheme"


@sync_schema("pipe")
@dataclass
class PipeSyncConfig(SyncConfig):
    """``sync=pipe``: one pipe per worker; each worker copies and acknowledges the update."""

    _target_: str = "weightsync.MultiProcessWeightSyncScheme"


@sync_schema("shared_mem")
@dataclass
class SharedMemSyncConfig(SyncConfig):
    """``sync=shared-mem`` (or ``shared_mem``): versioned snapshots in shared memory.

    ``num_buffers``: snapshots in the ring (2 to 64); null: ``num_workers + 2``.
    """

    _target_: str = "weightsync.SharedMemWeightSyncScheme"
    num_buffers: int | None = from_constructor(SharedMemWeightSyncScheme, "num_buffers")


@sync_schema("distributed")
@dataclass
class DistributedSyncConfig(SyncConfig):
    """``sync=distributed``: workers on other machines, under torchrun or Slurm.

    None means "from the launch": ``host`` the master address, ``port`` the master port + 1,
    ``join_timeout`` ``run.startup_timeout``. ``bind`` is this process's own address or network
    interface (default: torch's choice; ``GLOO_SOCKET_IFNAME`` honoured). ``heartbeat``: seconds
    between the trainer's heartbeats (a worker hearing none for four counts it lost; 0: none).
    ``backend``: how a GPU model travels (null: NCCL where both ends have it; ``nccl``; ``gloo``:
    through host memory). ``topology``: ``flat`` (one network copy per worker) or ``per_host``
    (one per host, shared-memory snapshots within).
    """

    _target_: str = "weightsync.DistributedWeightSyncScheme"
    host: str | None = None
    port: int | None = None
    bind: str | None = None
    join_timeout: float | None = None
    heartbeat: float = from_constructor(DistributedWeightSyncScheme, "heartbeat")
    backend: str | None = from_constructor(DistributedWeightSyncScheme, "backend")
    topology: str = from_constructor(DistributedWeightSyncScheme, "topology")


@sync_schema("ray")
@dataclass
class RaySyncConfig(SyncConfig):
    """``sync=ray``: workers as Ray actors; each version put once in Ray's object store.

    ``address``: the Ray cluster the run joins (null: a new local instance, stopped at the end;
    ``auto``: the one running on this node, left running). Read by the framework, not a scheme
    argument.
    """

    _target_: str = "weightsync.RayWeightSyncScheme"
    address: str | None = None


#: Keys of a ``sync`` option the framework reads to place the workers: not scheme arguments.
FRAMEWORK_KEYS = ("address",)


class ExtractAs(str, Enum):
    """The weight format at weightsync's API boundary."""

    state_dict = "state_dict"
    tensordict = "tensordict"


@dataclass
class StrategyConfig:
    """The weight format, a ``weightsync.WeightStrategy``."""

    _target_: str = "weightsync.WeightStrategy"
    extract_as: ExtractAs = from_constructor(WeightStrategy, "extract_as", ExtractAs)


def build_scheme(cfg: DictConfig) -> WeightSyncScheme:
    """The weight-sync scheme of ``cfg.sync`` using the weight format of ``cfg.strategy``."""
    strategy: WeightStrategy = instantiate(plain(cfg.strategy))
    node = {k: v for k, v in plain(cfg.sync).items() if k not in FRAMEWORK_KEYS}
    scheme = instantiate(node, strategy=strategy.extract_as)
    if not isinstance(scheme, WeightSyncScheme):
        raise TypeError(
            f"sync._target_={cfg.sync._target_!r} built a {type(scheme).__name__}, not a "
            "weightsync.WeightSyncScheme subclass"
        )
    return scheme
