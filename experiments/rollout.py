"""Experience collection: run a policy in a batched environment for a fixed number of steps,
and the :class:`Rollout` a worker ships to the trainer.

Plain tensors, no TensorDict: a worker process that never imports tensordict starts seconds
sooner (tensordict imports ``torch._dynamo``), and the learner indexes minibatches itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from experiments.envs.cartpole import BatchedCartPole
from experiments.models import ActorCritic

#: A time-major trajectory: each tensor is ``[T, B, ...]`` (steps, environments).
Trajectory = dict[str, torch.Tensor]


@dataclass
class Rollout:
    """What a worker ships per rollout: the ``[T, B]`` trajectory (with the behaviour policy's
    ``log_prob``), the returns of episodes that ended in it, and the weight version that acted."""

    trajectory: Trajectory
    episode_returns: torch.Tensor
    policy_version: int

    @property
    def frames(self) -> int:
        """Environment steps in the trajectory (``T * B``)."""
        return self.trajectory["reward"].numel()

    def to(self, device: torch.device | str) -> Rollout:
        """The same rollout with every tensor on ``device``."""
        return Rollout(
            {key: value.to(device) for key, value in self.trajectory.items()},
            self.episode_returns.to(device),
            self.policy_version,
        )


@torch.no_grad()
def collect_rollout(
    env: BatchedCartPole,
    policy: ActorCritic,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> Trajectory:
    """Run ``policy`` in ``env`` for ``num_steps`` steps, continuing from ``env.obs``.

    The policy may live on another device than the environment: observations are moved to the
    policy and actions back. ``generator`` (on the policy's device) drives action sampling.

    Returns:
        A :data:`Trajectory` on the env's device, ``T = num_steps`` by ``B = env.num_envs``:
        ``obs [T, B, 4]``, ``action [T, B]`` (int64), ``log_prob [T, B]`` (log-probability under
        the behaviour policy), ``reward [T, B]``, ``terminated [T, B]`` and ``truncated [T, B]``
        (bool) and ``next_obs [T, B, 4]`` (the true next state, before any automatic reset).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be positive, got {num_steps}")
    policy_device = next(policy.parameters()).device
    steps = []
    for _ in range(num_steps):
        obs = env.obs
        action, log_prob = policy.act(obs.to(policy_device), generator=generator)
        action = action.to(env.device)
        next_obs, reward, terminated, truncated = env.step(action)
        steps.append(
            {
                "obs": obs,
                "action": action,
                "log_prob": log_prob.to(env.device),
                "reward": reward,
                "terminated": terminated,
                "truncated": truncated,
                "next_obs": next_obs,
            }
        )
    return {key: torch.stack([step[key] for step in steps]) for key in steps[0]}
