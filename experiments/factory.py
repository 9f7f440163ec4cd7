"""Build the training run's objects from their ``_target_`` configs (``hydra.utils.instantiate``).

Everything a run is made of is named by a ``_target_`` in ``conf/``, so adding a model, an
environment or a learner is a YAML file plus a class: nothing here changes (the scheme is built
by ``experiments.common.schemes.build_scheme``, which the benchmark shares). Policy and
environment come back as factories (``functools.partial``), which pickle to spawned workers so
that each builds its own copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from experiments.actor import ActorSpec
from experiments.common.config import plain
from experiments.config import resolve_device
from experiments.learner import PolicyGradientLearner
from experiments.loggers import MetricLogger
from experiments.workload import env_spaces


def env_factory(cfg: DictConfig) -> Callable[..., Any]:
    """A picklable ``make_env(device=..., seed=...)`` for ``cfg.env``."""
    return instantiate(plain(cfg.env), _partial_=True)


def policy_factory(cfg: DictConfig) -> Callable[[], nn.Module]:
    """A picklable ``make_policy()`` for ``cfg.model``, built for ``cfg.env``'s spaces."""
    spaces = env_spaces(cfg)
    return functools.partial(
        instantiate(plain(cfg.model), _partial_=True), spaces.observation, spaces.action
    )


def actor_spec(cfg: DictConfig) -> ActorSpec:
    """What every worker of the run builds its environment and policy from."""
    return ActorSpec(
        make_env=env_factory(cfg),
        make_policy=policy_factory(cfg),
        rollout_steps=cfg.run.rollout_steps,
        device=str(resolve_device(cfg.device.worker)),
        seed=cfg.seed,
        torch_threads=cfg.run.torch_threads,
    )


def build_learner(cfg: DictConfig, policy: nn.Module, seed: int) -> PolicyGradientLearner:
    """The learner of ``cfg.learner`` training ``policy``."""
    return instantiate(plain(cfg.learner), model=policy, seed=seed)


def build_loggers(cfg: DictConfig) -> list[MetricLogger]:
    """The loggers of ``cfg.logger`` (``name: {_target_: ...}``), each told the run's config."""
    loggers = [instantiate(plain(node)) for node in cfg.logger.values()]
    hparams = plain(cfg)
    hparams.pop("logger", None)
    for logger in loggers:
        logger.log_hparams(hparams)
    return loggers
