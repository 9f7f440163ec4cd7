"""EnvPool as the vector backend of :class:`~experiments.envs.gym.GymEnv` (``env.backend=envpool``).

EnvPool (https://envpool.readthedocs.io) steps every copy of an env in C++ threads and batches
them without Python in the loop. Its Gymnasium API resets an env whose episode ended at the
*next* step (that step's action is ignored and its transition is not a real one); weightsync's
rollouts want every step to be a real transition, with the final observation of an ended episode
kept to bootstrap from (Gymnasium's ``SAME_STEP`` autoreset). :class:`EnvPoolVector` gets it by
resetting the ended copies (``reset(env_id)``) in the step that ended them. Episode returns are
summed here from the env's own rewards, so they are raw.

EnvPool is optional (the ``envpool`` extra): it is imported once an env asks for it.
"""

from __future__ import annotations

import difflib
from typing import Any

import numpy as np
from gymnasium import spaces as gym_spaces

from experiments.envs.vector import VectorStep


class EnvPoolVector:
    """``num_envs`` copies of the EnvPool env ``id``, reset in the step that ends an episode.

    Args:
        id: an EnvPool task id (``CartPole-v1``, ``HalfCheetah-v5``, ...: see
            ``envpool.list_all_envs()``).
        num_envs: copies stepped together.
        seed: copy ``i`` is seeded with ``seed + i`` by EnvPool (None: a random seed).
        max_steps: truncate episodes after this many steps (None: the env's own limit).
        make_kwargs: extra keyword arguments for ``envpool.make_gymnasium``.
    """

    def __init__(
        self,
        id: str,
        num_envs: int,
        seed: int | None,
        max_steps: int | None,
        make_kwargs: dict[str, Any],
    ) -> None:
        import envpool

        known = envpool.list_all_envs()
        if id not in known:
            close = difflib.get_close_matches(id, known, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"EnvPool has no env {id!r}.{hint} envpool.list_all_envs() lists all.")
        options = dict(make_kwargs)
        if max_steps is not None:
            options["max_episode_steps"] = max_steps
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0] >> 1)
        self._env = envpool.make_gymnasium(id, num_envs=num_envs, seed=seed, **options)
        self.single_observation_space = self._env.observation_space
        self.single_action_space = self._env.action_space
        self._returns = np.zeros(num_envs, dtype=np.float64)

    def reset(self) -> np.ndarray:
        """Every copy's first observation (the seed was given when the pool was made)."""
        obs, _ = self._env.reset()
        self._returns[:] = 0.0
        return obs

    def step(self, actions: np.ndarray) -> VectorStep:
        if isinstance(self.single_action_space, gym_spaces.Box):  # as Gymnasium's ClipAction
            space = self.single_action_space
            actions = np.clip(actions, space.low, space.high)
        obs, reward, terminated, truncated, _ = self._env.step(actions)
        self._returns += reward
        ended = np.flatnonzero(terminated | truncated)
        if ended.size == 0:
            return VectorStep(obs, reward, terminated, truncated, None, np.zeros(0))
        final = obs[ended].copy()
        returns = self._returns[ended].copy()
        self._returns[ended] = 0.0
        fresh, _ = self._env.reset(ended.astype(np.int32))
        obs = obs.copy()
        obs[ended] = fresh
        return VectorStep(obs, reward, terminated, truncated, final, returns)

    def close(self) -> None:
        self._env.close()
