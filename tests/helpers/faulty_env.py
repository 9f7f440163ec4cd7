"""A Gymnasium env that raises inside a worker after a few steps, for the fault tests.

``env=gym env.id=tests.helpers.faulty_env:Faulty-v0``: Gymnasium imports this module (in the
spawned worker too) before looking the id up, and the import registers it.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.classic_control import CartPoleEnv

FAIL_AFTER_STEPS = 40  # per env copy: a worker with 16-step rollouts delivers 2 first


class FaultyCartPole(CartPoleEnv):
    """CartPole whose simulator breaks on its ``FAIL_AFTER_STEPS``-th step."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps = 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps >= FAIL_AFTER_STEPS:
            raise RuntimeError(f"the simulator broke at step {self.steps}")
        return super().step(action)


gym.register("Faulty-v0", entry_point=FaultyCartPole, max_episode_steps=500)
