"""The ``env`` and ``model`` config groups: one schema per option, and the check that they fit.

Each option has its own dataclass, registered as ``env_schema/<name>`` or
``model_schema/<name>`` (as the ``sync`` options are), so ``env.noop_max=four`` or a key the
option does not take fails while Hydra composes. The Gymnasium options' schemas hold their
defaults themselves: their classes (``experiments/envs/gym.py``, ``atari.py``) import Gymnasium,
an optional extra, and are imported only when a run uses them.

:func:`env_spaces` builds one copy of the configured env in the trainer, before any worker
starts, to read its spaces; :func:`check_model_fits` then refuses a model that cannot read the
observations (a CNN on vectors, an MLP on frames) naming the space and the models that fit. A
misspelt env id is refused there too, with Gymnasium's own suggestion.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.utils import get_class
from omegaconf import MISSING, DictConfig

from experiments.common.config import ConfigError, from_constructor, option_schema, plain
from experiments.envs import BatchedCartPole
from experiments.models import ACTIVATIONS, ActorCritic, ImpalaCNN, NatureCNN, Policy
from experiments.spaces import EnvSpaces

ENV_SCHEMA_GROUP = "env_schema"
MODEL_SCHEMA_GROUP = "model_schema"
#: model option -> its class, for the message naming the models that fit an env
MODEL_OPTIONS: dict[str, type[Policy]] = {
    "mlp": ActorCritic,
    "nature_cnn": NatureCNN,
    "impala_cnn": ImpalaCNN,
}
ENVS_EXTRA = "pip install -e '.[envs]'"

Activation = Enum("Activation", {name: name for name in ACTIVATIONS}, type=str)
Activation.__doc__ = "Activation of the policy's hidden layers (see experiments.models)."


class EnvBackend(str, Enum):
    """Who steps a worker's Gymnasium envs."""

    gymnasium = "gymnasium"  # gymnasium.vector.SyncVectorEnv in the worker process
    envpool = "envpool"  # EnvPool's C++ threads (the envpool extra; env=gym ids, no normalisation)


# ------------------------------------------------------------------------------------ models
@dataclass
class ModelConfig:
    """The policy; the env's spaces are passed in when it is built."""

    _target_: str = MISSING


@option_schema(MODEL_SCHEMA_GROUP, "mlp")
@dataclass
class MlpModelConfig(ModelConfig):
    """``model=mlp``: actor and critic MLPs for vector observations."""

    _target_: str = "experiments.models.ActorCritic"
    hidden_sizes: list[int] = from_constructor(ActorCritic, "hidden_sizes")
    activation: Activation = from_constructor(ActorCritic, "activation", Activation)
    orthogonal_init: bool = from_constructor(ActorCritic, "orthogonal_init")
    log_std_init: float = from_constructor(ActorCritic, "log_std_init")


@option_schema(MODEL_SCHEMA_GROUP, "nature_cnn")
@dataclass
class NatureCnnModelConfig(ModelConfig):
    """``model=nature_cnn``: the DQN Nature CNN for uint8 frames."""

    _target_: str = "experiments.models.NatureCNN"
    hidden_size: int = from_constructor(NatureCNN, "hidden_size")
    log_std_init: float = from_constructor(NatureCNN, "log_std_init")


@option_schema(MODEL_SCHEMA_GROUP, "impala_cnn")
@dataclass
class ImpalaCnnModelConfig(ModelConfig):
    """``model=impala_cnn``: the IMPALA ResNet for uint8 frames."""

    _target_: str = "experiments.models.ImpalaCNN"
    channels: list[int] = from_constructor(ImpalaCNN, "channels")
    hidden_size: int = from_constructor(ImpalaCNN, "hidden_size")
    log_std_init: float = from_constructor(ImpalaCNN, "log_std_init")


# -------------------------------------------------------------------------------------- envs
@dataclass
class EnvConfig:
    """Each worker's batched environments; device and seed are filled in per worker."""

    _target_: str = MISSING
    num_envs: int = 8  # environments per worker (the constructors have no default)


@option_schema(ENV_SCHEMA_GROUP, "cartpole")
@dataclass
class CartPoleEnvConfig(EnvConfig):
    """``env=cartpole``: CartPole-v1 written in torch, every env of a worker in one tensor."""

    _target_: str = "experiments.envs.BatchedCartPole"
    max_steps: int = from_constructor(BatchedCartPole, "max_steps")  # episode truncation


@option_schema(ENV_SCHEMA_GROUP, "gym")
@dataclass
class GymEnvConfig(EnvConfig):
    """``env=gym`` (and ``env=mujoco``): any registered Gymnasium env (``experiments.envs.gym``).

    ``max_steps`` null: the env's own time limit. ``normalize_observation``,
    ``normalize_reward``: running normalisation (clipped to ``clip``), with the reward's return
    discounted by ``gamma`` (the learner's). ``make_kwargs``: passed to ``gymnasium.make``.
    """

    _target_: str = "experiments.envs.gym.GymEnv"
    id: str = MISSING
    backend: EnvBackend = EnvBackend.gymnasium
    max_steps: int | None = None
    normalize_observation: bool = False
    normalize_reward: bool = False
    gamma: float = "${learner.gamma}"  # type: ignore[assignment]  # an interpolation
    clip: float = 10.0
    make_kwargs: dict[str, Any] = field(default_factory=dict)


@option_schema(ENV_SCHEMA_GROUP, "atari")
@dataclass
class AtariEnvConfig(GymEnvConfig):
    """``env=atari``: an ALE game with the standard preprocessing (``experiments.envs.atari``).

    ``repeat_action_probability``: ALE v5's sticky actions (its own default is 0.25; 0.0 as
    CleanRL's Atari PPO, which plays the NoFrameskip-v4 games).
    """

    _target_: str = "experiments.envs.atari.AtariEnv"
    noop_max: int = 30
    frame_skip: int = 4
    screen_size: int = 84
    frame_stack: int = 4
    episodic_life: bool = True
    clip_rewards: bool = True
    repeat_action_probability: float = 0.0


# ----------------------------------------------------------------------------------- checks
def env_spaces(cfg: DictConfig) -> EnvSpaces:
    """The spaces of ``cfg.env`` (one copy of the env is built and closed); ConfigError for an
    env that cannot be built, with Gymnasium's own message (a misspelt id: its suggestion)."""
    options = plain(cfg.env)
    target = options.pop("_target_")
    return _describe(target, json.dumps(options, sort_keys=True))


@functools.cache
def _describe(target: str, options_json: str) -> EnvSpaces:
    """``target.describe(**options)``, once per configuration and process."""
    options = json.loads(options_json)
    what = f"env {options['id']!r}" if "id" in options else f"env {target}"
    try:
        env_class = get_class(target)
    except ImportError as err:
        raise ConfigError(
            f"{what} needs a package that is not installed ({_first_line(err)}): {ENVS_EXTRA} "
            "installs Gymnasium, ale-py and MuJoCo."
        ) from None
    try:
        return env_class.describe(**options)
    except Exception as err:  # any failure to build the env is the config's: say which
        raise ConfigError(f"{what} cannot be built: {_first_line(err)}") from None


def check_model_fits(cfg: DictConfig, spaces: EnvSpaces) -> None:
    """Refuse a model that cannot read ``spaces``' observations, naming those that can."""
    model_class = get_class(cfg.model._target_)
    kind = spaces.observation.kind
    if model_class.observation_kind == kind:
        return
    fitting = [f"model={name}" for name, cls in MODEL_OPTIONS.items()
               if cls.observation_kind == kind]  # fmt: skip
    raise ConfigError(
        f"model {model_class.__name__} reads {model_class.observation_kind} observations, but "
        f"{spaces.name} gives {kind} (shape {list(spaces.observation.shape)}). Models that fit: "
        f"{', '.join(fitting)}."
    )


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
