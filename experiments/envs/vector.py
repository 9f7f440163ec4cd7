"""What a vector backend of :class:`~experiments.envs.gym.GymEnv` returns per step, and the
Gymnasium backend (``env.backend=gymnasium``): copies in one ``SyncVectorEnv``.

Both backends reset a copy in the step that ends its episode (Gymnasium's ``SAME_STEP``
autoreset), so each step is a real transition and the final observation of an ended episode is
there to bootstrap from; :mod:`experiments.envs.envpool_vector` is the other backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv


class VectorStep(NamedTuple):
    """One step of every copy."""

    obs: np.ndarray  # what to act on next: the reset observation where an episode ended
    reward: np.ndarray
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    final_obs: np.ndarray | None  # the last observations of the ended episodes, in copy order
    returns: np.ndarray  # raw returns of the episodes that ended (RecordEpisodeStatistics')


class GymnasiumVector:
    """``num_envs`` copies made by ``make_one`` in a ``SyncVectorEnv`` (the workers are the
    processes; a worker steps its copies in turn). Each copy records its raw episode returns
    (``RecordEpisodeStatistics``, the first wrapper of every copy)."""

    def __init__(self, make_one: Callable[[], gym.Env], num_envs: int, seed: int | None) -> None:
        self._envs = SyncVectorEnv([make_one] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP)
        self._seed = seed
        self.single_observation_space = self._envs.single_observation_space
        self.single_action_space = self._envs.single_action_space

    def reset(self) -> np.ndarray:
        """Every copy's first observation; copy ``i`` is seeded with ``seed + i``."""
        obs, _ = self._envs.reset(seed=self._seed)
        return obs

    def step(self, actions: np.ndarray) -> VectorStep:
        obs, reward, terminated, truncated, info = self._envs.step(actions)
        if "_final_obs" not in info:
            return VectorStep(obs, reward, terminated, truncated, None, np.zeros(0))
        ended = info["_final_obs"]
        final = np.stack(info["final_obs"][ended])
        episodes = info["final_info"].get("episode")
        ended_episodes = info["final_info"].get("_episode")
        returns = np.zeros(0) if episodes is None else episodes["r"][ended_episodes]
        return VectorStep(obs, reward, terminated, truncated, final, returns)

    def close(self) -> None:
        self._envs.close()
