"""Build the experiment's objects from their ``_target_`` configs with ``hydra.utils.instantiate``.

Everything a run is made of is named by a ``_target_`` in ``conf/``, so adding a scheme (or a
model, an environment, a learner) is a YAML file plus a class: nothing here changes. Policy and
environment come back as factories (``functools.partial``), which pickle to spawned workers so
that each builds its own copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from experiments.config import plain
from experiments.learner import PPOLearner
from weightsync import WeightStrategy, WeightSyncScheme


def build_scheme(cfg: DictConfig) -> WeightSyncScheme:
    """The weight-sync scheme of ``cfg.sync`` using the weight format of ``cfg.strategy``."""
    strategy: WeightStrategy = instantiate(plain(cfg.strategy))
    scheme = instantiate(plain(cfg.sync), strategy=strategy.extract_as)
    if not isinstance(scheme, WeightSyncScheme):
        raise TypeError(
            f"sync._target_={cfg.sync._target_!r} built a {type(scheme).__name__}, not a "
            "weightsync.WeightSyncScheme subclass"
        )
    return scheme


def env_factory(cfg: DictConfig) -> Callable[..., Any]:
    """A picklable ``make_env(device=..., seed=...)`` for ``cfg.env``."""
    return instantiate(plain(cfg.env), _partial_=True)


def policy_factory(cfg: DictConfig) -> Callable[[], nn.Module]:
    """A picklable ``make_policy()`` for ``cfg.model``, sized for ``cfg.env``'s spaces."""
    env_cls = get_class(cfg.env._target_)
    return instantiate(
        plain(cfg.model),
        obs_size=env_cls.observation_size,
        num_actions=env_cls.num_actions,
        _partial_=True,
    )


def build_learner(cfg: DictConfig, policy: nn.Module, seed: int) -> PPOLearner:
    """The learner of ``cfg.learner`` training ``policy``."""
    return instantiate(plain(cfg.learner), model=policy, seed=seed)
