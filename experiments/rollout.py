"""Experience collection: run a policy in a batched environment for a fixed number of steps."""

from __future__ import annotations

import torch
from tensordict import TensorDict

from experiments.envs.cartpole import BatchedCartPole
from experiments.models import ActorCritic


@torch.no_grad()
def collect_rollout(
    env: BatchedCartPole,
    policy: ActorCritic,
    num_steps: int,
    generator: torch.Generator | None = None,
) -> TensorDict:
    """Run ``policy`` in ``env`` for ``num_steps`` steps, continuing from ``env.obs``.

    The policy may live on another device than the environment: observations are moved to the
    policy and actions back. ``generator`` (on the policy's device) drives action sampling.

    Returns:
        A TensorDict on the env's device with batch size ``[num_steps, num_envs]`` and keys
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
    return TensorDict(
        {key: torch.stack([step[key] for step in steps]) for key in steps[0]},
        batch_size=[num_steps, env.num_envs],
        device=env.device,
    )
