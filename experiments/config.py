"""The training run's configuration schema: types and closed choices, then cross-field checks.

The dataclasses below are registered in Hydra's ConfigStore as ``schema`` and sit first in
``conf/config.yaml``'s defaults list, so every YAML file and command-line override is merged into
a typed node: a wrong type (``run.num_workers=two``), an unknown key or a value outside a closed
choice (``device.trainer=tpu``) fails while Hydra composes the config. Each ``sync`` option
brings its own schema (``experiments/common/schemes.py``). What a type cannot say (at least one
worker, CUDA present when asked for, a budget of at least one iteration) is checked by
:func:`validate`, which ``run.py`` calls before any process starts and which raises a
:class:`ConfigError` whose one-paragraph message says what is wrong and what is allowed.

Defaults have one source (``experiments/common/config.py``): the constructor of a node's
``_target_`` where it has one, else the field here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from experiments.common.config import ConfigError, from_constructor, plain
from experiments.common.schemes import StrategyConfig
from experiments.correction import Correction
from experiments.learner import ImpalaLearner, PPOLearner
from experiments.workload import check_model_fits, env_spaces

MAX_SHARED_MEM_BUFFERS = 64  # weightsync's shared-memory ring indexes its snapshots in 6 bits

__all__ = ["Config", "ConfigError", "plain", "resolve_device", "validate"]


class Device(str, Enum):
    """Where a process computes; ``auto`` is CUDA where available, else CPU."""

    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


# Functional form: "continue" and "async" are keywords, and OmegaConf matches config values to
# member names.
OnWorkerFailure = Enum("OnWorkerFailure", {"stop": "stop", "continue": "continue"}, type=str)
OnWorkerFailure.__doc__ = "What the trainer does when a worker dies: stop the run, or go on."
Mode = Enum("Mode", {"sync": "sync", "async": "async"}, type=str)
Mode.__doc__ = "sync: workers collect one rollout per update; async: they never wait."
OnStale = Enum("OnStale", {"drop": "drop", "downweight": "downweight"}, type=str)
OnStale.__doc__ = "What happens to a rollout older than run.max_staleness."


class Objective(str, Enum):
    """``summary.json`` fields that ``run.py`` can return to a sweeper (e.g. optuna)."""

    final_return = "final_return"
    initial_return = "initial_return"
    frames_per_s = "frames_per_s"
    wall_time_s = "wall_time_s"
    sync_latency_p50_ms = "sync_latency_p50_ms"
    sync_latency_p95_ms = "sync_latency_p95_ms"
    staleness_mean = "staleness_mean"


@dataclass
class DeviceConfig:
    """Where the trainer learns and where the workers act."""

    trainer: Device = MISSING  # set by the device option (device=cpu by default)
    worker: Device = MISSING


LEARNER_SCHEMA_GROUP = "learner_schema"
#: What every learner takes (besides the model and the seed), with its type.
LEARNER_ARGUMENTS = {
    "lr": float, "gamma": float, "gae_lambda": float, "ent_coef": float, "vf_coef": float,
    "epochs": int, "minibatches": int, "max_grad_norm": float, "correction": Correction,
    "rho_bar": float, "c_bar": float,
}  # fmt: skip


def learner_schema(name: str, learner: type, **extra: type) -> type:
    """Register the schema of option ``name`` of the ``learner`` group as
    ``learner_schema/<name>`` (``conf/learner/<name>.yaml`` extends it): a dataclass whose
    ``_target_`` is ``learner`` and whose fields are :data:`LEARNER_ARGUMENTS` and ``extra``,
    each defaulting to ``learner``'s constructor (one source of defaults)."""
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=f"{learner.__module__}.{learner.__name__}"))
    ]
    for key, kind in (LEARNER_ARGUMENTS | extra).items():
        convert = kind if isinstance(kind, type) and issubclass(kind, Enum) else None
        fields.append((key, kind, from_constructor(learner, key, convert)))
    schema = dataclasses.make_dataclass(f"{learner.__name__}Config", fields)
    ConfigStore.instance().store(group=LEARNER_SCHEMA_GROUP, name=name, node=schema)
    return schema


PPOConfig = learner_schema("ppo", PPOLearner, clip_coef=float)
ImpalaConfig = learner_schema("impala", ImpalaLearner)


@dataclass
class RunConfig:
    """The actor-learner loop: how many workers, how much experience, how often to sync."""

    num_workers: int = 2  # spawned actor processes
    total_frames: int = MISSING  # set by the experiment preset
    rollout_steps: int = 128  # steps per environment in one rollout
    sync_every: int = 1  # push weights every this many updates
    mode: Mode = Mode.sync  # or async: workers act continuously, the learner takes what arrives
    max_staleness: int | None = None  # rollouts more versions old are dropped/down-weighted
    on_stale: OnStale = OnStale.drop  # or downweight: (K + 1) / (staleness + 1)
    on_worker_failure: OnWorkerFailure = OnWorkerFailure.stop  # or continue, with the survivors
    log_every: int = 10  # iterations between progress lines
    torch_threads: int = 1  # intra-op threads per process; 2 workers + trainer share 2 cores
    startup_timeout: float = 120.0  # seconds for the workers to spawn and import torch
    rollout_timeout: float = 60.0  # seconds a worker may take per rollout or report


@dataclass
class Config:
    """The root of the training config (``conf/config.yaml``)."""

    seed: int = 0
    objective: Objective = Objective.final_return  # what main() returns to a sweeper
    sync: Any = MISSING  # each sync option brings its own schema
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    model: Any = MISSING  # each model option brings its own schema (experiments/workload.py)
    env: Any = MISSING  # and so does each env option
    device: DeviceConfig = field(default_factory=DeviceConfig)
    learner: Any = MISSING  # each learner option brings its own schema
    run: RunConfig = field(default_factory=RunConfig)
    logger: dict[str, Any] = field(default_factory=dict)  # name -> a _target_ logger config


ConfigStore.instance().store(name="schema", node=Config)


def resolve_device(name: Device | str) -> torch.device:
    """The torch device for a config value: ``auto`` becomes CUDA where available, else CPU."""
    name = Device(name).value
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def validate(cfg: DictConfig) -> None:
    """Check what the schema's types cannot; raise ConfigError naming the key and the fix."""
    for role in ("trainer", "worker"):
        if Device(cfg.device[role]) is Device.cuda and not torch.cuda.is_available():
            raise ConfigError(
                f"device.{role}=cuda, but torch sees no CUDA device on this machine "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). "
                "Use device=cpu, or device=auto to use CUDA only where it is available."
            )
    run, env, learner = cfg.run, cfg.env, cfg.learner
    if OmegaConf.is_missing(run, "total_frames"):
        raise ConfigError(
            "run.total_frames is not set: the frame budget comes from the experiment preset. "
            "Pick one (experiment=default or experiment=smoke) or set run.total_frames=N."
        )
    at_least_one = {
        "run.num_workers": (run.num_workers, "the trainer needs a worker to collect experience"),
        "run.rollout_steps": (run.rollout_steps, "a rollout is at least one step"),
        "run.sync_every": (run.sync_every, "weights are pushed every N updates, N >= 1"),
        "run.log_every": (run.log_every, "progress is logged every N iterations, N >= 1"),
        "run.torch_threads": (run.torch_threads, "each process needs a thread"),
        "env.num_envs": (env.num_envs, "each worker runs at least one environment"),
        "learner.epochs": (learner.epochs, "each update makes at least one pass"),
        "learner.minibatches": (learner.minibatches, "each pass has at least one minibatch"),
    }
    if env.get("max_steps") is not None:
        at_least_one["env.max_steps"] = (env.max_steps, "an episode lasts at least one step")
    for key, (value, why) in at_least_one.items():
        if value < 1:
            raise ConfigError(f"{key}={value} is not allowed: {why}. Set {key} to an integer >= 1.")
    positive = {
        "sync.timeout": cfg.sync.timeout,
        "run.startup_timeout": run.startup_timeout,
        "run.rollout_timeout": run.rollout_timeout,
        "learner.lr": learner.lr,
        "learner.rho_bar": learner.rho_bar,
        "learner.c_bar": learner.c_bar,
    }
    for key, value in positive.items():
        if not value > 0 or not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not allowed: it must be a finite number > 0.")
    _check_staleness_bound(cfg)
    num_buffers = cfg.sync.get("num_buffers")
    if num_buffers is not None and not 2 <= num_buffers <= MAX_SHARED_MEM_BUFFERS:
        raise ConfigError(
            f"sync.num_buffers={num_buffers} is not allowed: the shared-memory ring holds 2 to "
            f"{MAX_SHARED_MEM_BUFFERS} snapshots. Set sync.num_buffers in that range, or null "
            "for num_workers + 2."
        )
    sizes = list(cfg.model.get("hidden_sizes", [1]))
    if not sizes or min(sizes) < 1:
        raise ConfigError(
            f"model.hidden_sizes={sizes} is not allowed: give one or more layer widths, each >= 1 "
            "(e.g. model.hidden_sizes=[64,64])."
        )
    frames_per_iteration = run.num_workers * env.num_envs * run.rollout_steps
    if run.total_frames < frames_per_iteration:
        raise ConfigError(
            f"run.total_frames={run.total_frames} is less than one iteration: each iteration "
            f"collects run.num_workers x env.num_envs x run.rollout_steps = {run.num_workers} x "
            f"{env.num_envs} x {run.rollout_steps} = {frames_per_iteration} frames. Set "
            f"run.total_frames >= {frames_per_iteration} or collect less per iteration."
        )
    if learner.minibatches > frames_per_iteration:
        raise ConfigError(
            f"learner.minibatches={learner.minibatches} is more than the {frames_per_iteration} "
            "frames of one iteration's batch. Set learner.minibatches <= "
            f"{frames_per_iteration}."
        )
    check_model_fits(cfg, env_spaces(cfg))


def _check_staleness_bound(cfg: DictConfig) -> None:
    """``run.max_staleness``: null or >= 0; under ``on_stale=drop`` one the run can keep."""
    run = cfg.run
    bound = run.max_staleness
    if bound is None:
        return
    if bound < 0:
        raise ConfigError(
            f"run.max_staleness={bound} is not allowed: give the number of versions a rollout "
            "may lag behind the learner (an integer >= 0), or null for no bound."
        )
    if OnStale(run.on_stale) is not OnStale.drop:
        return
    if cfg.sync._target_ == "weightsync.NoWeightSyncScheme":
        raise ConfigError(
            f"run.max_staleness={bound} with sync=none: the workers never get new weights, so "
            "every rollout soon lags more and would be dropped for ever. Pick a scheme that "
            "syncs, run.on_stale=downweight, or run.max_staleness=null."
        )
    if bound < run.sync_every - 1:
        raise ConfigError(
            f"run.max_staleness={bound} is less than run.sync_every - 1 = {run.sync_every - 1}: "
            "between two syncs even the newest weights the workers can hold fall that far "
            "behind, so every rollout would be dropped and the learner never update again. Set "
            f"run.max_staleness >= {run.sync_every - 1}, sync more often, or "
            "run.on_stale=downweight."
        )
