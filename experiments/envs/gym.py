"""Gymnasium environments, vectorised inside each worker, behind the batched-env interface.

:class:`GymEnv` runs ``num_envs`` copies of any registered Gymnasium env (``Acrobot-v1``,
``LunarLander-v3``, ``Pendulum-v1``, the MuJoCo ``HalfCheetah-v5``, ...) in one
``gymnasium.vector.SyncVectorEnv`` (``env.backend=gymnasium``: the workers are the processes; a
worker steps its envs in turn) or in EnvPool (``env.backend=envpool``: C++ threads) and offers
what :class:`~experiments.envs.BatchedCartPole` offers: ``obs``, ``step`` returning the true next
observations, ``pop_finished_returns``. Episodes reset in the step that ends them (Gymnasium's
``SAME_STEP`` autoreset, :mod:`experiments.envs.vector`), so each step is a real transition and
the final observation of a truncated episode is there to bootstrap from.

Each wrapper is Gymnasium's own (:mod:`experiments.envs.atari` adds the Atari ones).
Gymnasium (with MuJoCo for its MuJoCo envs) is the optional ``envs`` extra: this module is
imported only when a config names one of its classes.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces as gym_spaces
from gymnasium.wrappers import (
    ClipAction,
    NormalizeObservation,
    NormalizeReward,
    RecordEpisodeStatistics,
    TransformObservation,
    TransformReward,
)
from torch import Tensor

from experiments.envs.envpool_vector import EnvPoolVector
from experiments.envs.vector import GymnasiumVector
from experiments.spaces import (
    ActionSpace,
    EnvSpaces,
    ObservationSpace,
    UnsupportedSpaceError,
)


class GymEnv:
    """``num_envs`` copies of the Gymnasium env ``id``, stepped together, as torch tensors.

    Observations are float32 vectors ``[B, D]`` or uint8 frames ``[B, C, H, W]``; actions are
    int64 ``[B]`` (Discrete) or float32 ``[B, A]`` (a Box, clipped to its bounds before the env
    sees them). Tensors live on the CPU whatever ``device`` the worker gives (the simulators
    run there).

    Args:
        id: a registered Gymnasium id; a misspelt one raises Gymnasium's own suggestion.
        num_envs: copies of the env in this worker.
        device: accepted for the batched-env interface; data stays on the CPU.
        seed: copy ``i`` is reset with ``seed + i`` (None: unseeded).
        backend: ``gymnasium`` (``SyncVectorEnv``) or ``envpool`` (the ``envpool`` extra; not
            with observation or reward normalisation, which wrap each copy in Python).
        max_steps: truncate episodes after this many steps (None: the env's own limit).
        normalize_observation: running mean/std normalisation of observations (per env copy,
            clipped to ``[-clip, clip]``), as PPO's continuous-control setups use.
        normalize_reward: scale rewards by a running std of the discounted return (``gamma``),
            clipped to ``[-clip, clip]``; episode returns are still reported raw.
        gamma: discount of the return ``normalize_reward`` tracks (the learner's).
        clip: bound of the normalised observations and rewards.
        make_kwargs: extra keyword arguments for ``gymnasium.make``.
    """

    def __init__(
        self,
        id: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        *,
        backend: str,
        max_steps: int | None,
        normalize_observation: bool,
        normalize_reward: bool,
        gamma: float,
        clip: float,
        make_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        self.id = id
        self.num_envs = num_envs
        self.device = torch.device("cpu")
        self._options = {
            "max_steps": max_steps,
            "normalize_observation": normalize_observation,
            "normalize_reward": normalize_reward,
            "gamma": gamma,
            "clip": clip,
            "make_kwargs": dict(make_kwargs or {}),
        }
        self._envs = self._copies(id, num_envs, seed, backend, self._options, self._make_one)
        self.spaces = spaces_of(id, self._envs.single_observation_space,
                                self._envs.single_action_space)  # fmt: skip
        self._obs = self._to_tensor(self._envs.reset())
        self._finished: list[np.ndarray] = []

    @classmethod
    def describe(cls, id: str, **options: Any) -> EnvSpaces:
        """The spaces of ``id`` as wrapped here, read from one copy (built, then closed)."""
        options.pop("num_envs", None)
        backend = options.pop("backend", "gymnasium")
        envs = cls._copies(id, 1, 0, backend, options, lambda: cls._make(id, **options))
        try:
            return spaces_of(id, envs.single_observation_space, envs.single_action_space)
        finally:
            envs.close()

    @property
    def obs(self) -> Tensor:
        """Observations ``[B, ...]`` to act on next (reset already, where an episode ended)."""
        return self._obs

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Apply one action per env; ``(next_obs, reward, terminated, truncated)`` as in
        :meth:`BatchedCartPole.step`: ``next_obs`` is the true next observation (the final one
        where an episode ended), :attr:`obs` the one to act on next."""
        step = self._envs.step(action.cpu().numpy())
        self._obs = self._to_tensor(step.obs)
        next_obs = self._obs
        terminated = torch.from_numpy(np.asarray(step.terminated, dtype=bool))
        truncated = torch.from_numpy(np.asarray(step.truncated, dtype=bool))
        if step.final_obs is not None:
            next_obs = next_obs.clone()
            next_obs[terminated | truncated] = self._to_tensor(step.final_obs)
        if step.returns.size:
            self._finished.append(step.returns)
        return next_obs, torch.as_tensor(step.reward, dtype=torch.float32), terminated, truncated

    def pop_finished_returns(self) -> Tensor:
        """Raw returns (float32 ``[N]``) of the episodes ended since the last call."""
        finished = np.concatenate(self._finished) if self._finished else np.zeros(0)
        self._finished = []
        return torch.as_tensor(finished, dtype=torch.float32)

    def close(self) -> None:
        """Close every copy of the env."""
        self._envs.close()

    def _to_tensor(self, obs: np.ndarray) -> Tensor:
        """uint8 frames as they are (no copy); vectors as float32."""
        if obs.dtype == np.uint8:
            return torch.from_numpy(obs)
        return torch.as_tensor(obs, dtype=torch.float32)

    def _make_one(self) -> gym.Env:
        return self._make(self.id, **self._options)

    @classmethod
    def _copies(
        cls,
        id: str,
        num_envs: int,
        seed: int | None,
        backend: str,
        options: dict[str, Any],
        make_one: Callable[[], gym.Env],
    ) -> GymnasiumVector | EnvPoolVector:
        """``num_envs`` copies of ``id`` stepped by ``backend`` (Gymnasium's are ``make_one()``
        each)."""
        check_backend(backend)
        if backend == "gymnasium":
            return GymnasiumVector(make_one, num_envs, seed)
        return cls._envpool(id, num_envs, seed, options)

    @classmethod
    def _envpool(
        cls, id: str, num_envs: int, seed: int | None, options: dict[str, Any]
    ) -> EnvPoolVector:
        """The copies of ``id`` in EnvPool; refused where this family's options need wrappers
        (normalisation wraps each copy in Python, and EnvPool steps its copies in C++)."""
        wanted = [key for key in ("normalize_observation", "normalize_reward") if options.get(key)]
        if wanted:
            raise ValueError(
                f"env.{wanted[0]}=true needs env.backend=gymnasium: it wraps each copy of the "
                "env in Python, and EnvPool steps its copies in C++. Use env.backend=gymnasium, "
                f"or set env.{wanted[0]}=false."
            )
        return EnvPoolVector(
            id, num_envs, seed, options.get("max_steps"), options.get("make_kwargs") or {}
        )

    @classmethod
    def _make(
        cls,
        id: str,
        *,
        max_steps: int | None,
        normalize_observation: bool,
        normalize_reward: bool,
        gamma: float,
        clip: float,
        make_kwargs: dict[str, Any] | None = None,
        **extra: Any,
    ) -> gym.Env:
        """One copy of ``id`` with the wrappers of this env family."""
        env = gym.make(id, max_episode_steps=max_steps, **(make_kwargs or {}))
        env = RecordEpisodeStatistics(env)  # first: the returns reported are the env's own
        if isinstance(env.action_space, gym_spaces.Box):
            env = ClipAction(env)
        if normalize_observation:
            env = NormalizeObservation(env)
            env = TransformObservation(env, lambda o: np.clip(o, -clip, clip), None)
        if normalize_reward:
            env = NormalizeReward(env, gamma=gamma)
            env = TransformReward(env, lambda r: np.clip(r, -clip, clip))
        return cls._wrap(env, **extra)

    @classmethod
    def _wrap(cls, env: gym.Env, **extra: Any) -> gym.Env:
        """This family's own wrappers (none for plain Gymnasium envs)."""
        if extra:
            raise TypeError(f"{cls.__name__} takes no options {sorted(extra)}")
        return env


def check_backend(backend: str) -> None:
    """Refuse a backend that is not one, or EnvPool where it is not installed."""
    if backend == "gymnasium":
        return
    if backend == "envpool":
        if importlib.util.find_spec("envpool") is None:
            raise ValueError(
                "env.backend=envpool is not available: EnvPool is not installed here "
                '(pip install -e ".[envpool]"; wheels exist for Linux x86-64). '
                "Use env.backend=gymnasium."
            )
        return
    raise ValueError(f"env.backend={backend!r} is not a backend: use gymnasium or envpool")


def spaces_of(id: str, observation: gym.Space, action: gym.Space) -> EnvSpaces:
    """``id``'s Gymnasium spaces as the :class:`EnvSpaces` a policy is built for."""
    name = f"{id} (observations {observation}, actions {action})"
    if (
        isinstance(observation, gym_spaces.Box)
        and observation.dtype == np.uint8
        and len(observation.shape) == 3
    ):
        obs = ObservationSpace("pixels", tuple(observation.shape))
    elif isinstance(observation, gym_spaces.Box) and len(observation.shape) == 1:
        obs = ObservationSpace("vector", tuple(observation.shape))
    else:
        raise UnsupportedSpaceError(
            f"{id} has observations {observation}: no policy here reads them. Policies read a "
            "1-D Box (model=mlp) or uint8 frames [C, H, W] (model=nature_cnn, model=impala_cnn)."
        )
    if isinstance(action, gym_spaces.Discrete):
        act = ActionSpace("discrete", int(action.n))
    elif isinstance(action, gym_spaces.Box) and len(action.shape) == 1:
        act = ActionSpace("continuous", int(action.shape[0]))
    else:
        raise UnsupportedSpaceError(
            f"{id} has actions {action}: no policy here acts in them. Policies act in a "
            "Discrete space (categorical) or a 1-D Box (Gaussian)."
        )
    return EnvSpaces(obs, act, name)
