"""A batched CartPole-v1 implemented in torch.

The dynamics, thresholds and reward follow the classic Barto/Gym CartPole-v1 (Euler integration),
but all environments of a batch are stepped with a handful of tensor operations, so thousands of
environments cost about as much as one and no simulator dependency is needed. Environments that
finish are reset automatically inside :meth:`BatchedCartPole.step`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from experiments.spaces import ActionSpace, EnvSpaces, ObservationSpace

GRAVITY = 9.8
MASS_CART = 1.0
MASS_POLE = 0.1
TOTAL_MASS = MASS_CART + MASS_POLE
HALF_POLE_LENGTH = 0.5
POLE_MASS_LENGTH = MASS_POLE * HALF_POLE_LENGTH
FORCE_MAG = 10.0
TAU = 0.02
X_THRESHOLD = 2.4
THETA_THRESHOLD = 12 * 2 * math.pi / 360  # 12 degrees, about 0.2095 rad
RESET_BOUND = 0.05


class BatchedCartPole:
    """``num_envs`` independent CartPole-v1 environments stepped together.

    The observation of each environment is ``(x, x_dot, theta, theta_dot)`` as float32. Action 0
    pushes the cart left and action 1 pushes it right. Every step yields a reward of 1.0. An
    episode terminates when ``|x| > 2.4`` or ``|theta| > 12 degrees`` and is truncated after
    ``max_steps`` steps. All randomness comes from a private ``torch.Generator`` so that a seeded
    environment is reproducible whatever else uses the global RNG.

    Returns of finished episodes accumulate (a few bytes per step) until
    :meth:`pop_finished_returns` is called, so callers should pop them regularly, e.g. once per
    rollout.
    """

    observation_size = 4
    num_actions = 2

    def __init__(
        self,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        max_steps: int = 500,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.max_steps = max_steps
        self._generator = torch.Generator(device=self.device)
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        # Finished-episode returns are kept as (returns, done-mask) pairs and only masked when
        # popped, so that stepping never forces a device synchronisation.
        self._pending_returns: list[tuple[Tensor, Tensor]] = []
        self.reset()

    @classmethod
    def describe(cls, **options: Any) -> EnvSpaces:
        """The spaces every BatchedCartPole has: 4 floats in, 2 discrete actions out."""
        return EnvSpaces(
            ObservationSpace("vector", (cls.observation_size,)),
            ActionSpace("discrete", cls.num_actions),
            "CartPole (torch, batched: observations 4 floats, actions Discrete(2))",
        )

    @property
    def obs(self) -> Tensor:
        """Observations ``[B, 4]`` to act on next (already reset for environments that ended).

        The tensor is replaced, never modified in place, by :meth:`step`, so it is safe to keep.
        """
        return self._state

    def reset(self) -> Tensor:
        """Start a new episode in every environment and return the observations ``[B, 4]``.

        Episodes still running are discarded without being recorded as finished.
        """
        self._state = self._random_states()
        self._steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._returns = torch.zeros(self.num_envs, device=self.device)
        return self._state

    def set_state(self, state: Tensor) -> None:
        """Overwrite the physical state ``[B, 4]`` of every environment (for tests and debugging).

        Step counters and running returns are left unchanged.
        """
        if state.shape != (self.num_envs, self.observation_size):
            raise ValueError(
                f"state must have shape {(self.num_envs, self.observation_size)}, "
                f"got {tuple(state.shape)}"
            )
        self._state = state.to(device=self.device, dtype=torch.float32).clone()

    def step(self, action: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Apply one action per environment.

        Args:
            action: int64 tensor ``[B]`` with values in ``{0, 1}``.

        Returns:
            ``(next_obs, reward, terminated, truncated)``, each with leading dimension ``B``.
            ``next_obs`` is the true next state, taken *before* the automatic reset, so that a
            learner can bootstrap from it on truncation; :attr:`obs` holds the post-reset
            observations to act on next.
        """
        if action.shape != (self.num_envs,):
            raise ValueError(
                f"action must have shape ({self.num_envs},), got {tuple(action.shape)}"
            )
        x, x_dot, theta, theta_dot = self._state.unbind(-1)
        force = torch.where(action.to(self.device) == 1, FORCE_MAG, -FORCE_MAG)
        cos_theta = torch.cos(theta)
        sin_theta = torch.sin(theta)
        temp = (force + POLE_MASS_LENGTH * theta_dot.square() * sin_theta) / TOTAL_MASS
        theta_acc = (GRAVITY * sin_theta - cos_theta * temp) / (
            HALF_POLE_LENGTH * (4.0 / 3.0 - MASS_POLE * cos_theta.square() / TOTAL_MASS)
        )
        x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos_theta / TOTAL_MASS
        next_obs = torch.stack(
            (
                x + TAU * x_dot,
                x_dot + TAU * x_acc,
                theta + TAU * theta_dot,
                theta_dot + TAU * theta_acc,
            ),
            dim=-1,
        )

        steps = self._steps + 1
        returns = self._returns + 1.0
        reward = torch.ones(self.num_envs, device=self.device)
        terminated = (next_obs[:, 0].abs() > X_THRESHOLD) | (next_obs[:, 2].abs() > THETA_THRESHOLD)
        truncated = steps >= self.max_steps
        done = terminated | truncated

        self._pending_returns.append((returns, done))
        # Fresh states are drawn for every environment on every step so that the generator is
        # consumed identically whatever ends when, which keeps seeded runs reproducible.
        self._state = torch.where(done.unsqueeze(-1), self._random_states(), next_obs)
        self._steps = torch.where(done, 0, steps)
        self._returns = torch.where(done, 0.0, returns)
        return next_obs, reward, terminated, truncated

    def pop_finished_returns(self) -> Tensor:
        """Return the returns (1-D float, on the env's device) of episodes ended since last call."""
        finished = [returns[done] for returns, done in self._pending_returns]
        self._pending_returns = []
        if not finished:
            return torch.zeros(0, device=self.device)
        return torch.cat(finished)

    def _random_states(self) -> Tensor:
        """Initial states drawn uniformly from ``[-0.05, 0.05]^4``."""
        uniform = torch.rand(
            (self.num_envs, self.observation_size), generator=self._generator, device=self.device
        )
        return (2.0 * uniform - 1.0) * RESET_BOUND
