"""The contract every policy keeps, and the action distribution it samples from.

A policy is an actor-critic :class:`Policy`: subclasses compute the actor's output (logits for
discrete actions, the mean for continuous ones) and the critic's value; this base class turns
the actor's output into actions, log-probabilities and entropies for the env's action space,
so that the rollout and the PPO learner work unchanged with every model and every env.

Continuous actions follow a diagonal Gaussian with a state-independent log standard deviation
(a learned parameter ``log_std``, as in PPO's continuous-control setups): it is part of the
weights and is synced with them. Actions are sampled unclipped; the env clips what it executes,
so log-probabilities stay those of the sampled action.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from experiments.spaces import ActionSpace, ObservationKind

LOG_2PI = math.log(2 * math.pi)


class Policy(nn.Module):
    """An actor-critic for ``action``'s space; subclasses set :attr:`observation_kind` and
    implement :meth:`actor_output` and :meth:`value` (and :meth:`forward` where actor and
    critic share a trunk).

    Args:
        action: the env's action space.
        log_std_init: initial log standard deviation of a Gaussian policy (continuous actions).
    """

    observation_kind: ClassVar[ObservationKind]  # the observations this model can read

    def __init__(self, action: ActionSpace, log_std_init: float = 0.0) -> None:
        super().__init__()
        self.action_space = action
        self.log_std = (
            nn.Parameter(torch.full((action.size,), float(log_std_init)))
            if action.kind == "continuous"
            else None
        )

    def actor_output(self, obs: Tensor) -> Tensor:
        """Logits ``[..., num_actions]`` (discrete) or the action mean ``[..., size]``."""
        raise NotImplementedError

    def value(self, obs: Tensor) -> Tensor:
        """The critic's state values ``[...]``."""
        raise NotImplementedError

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """The actor's output and the values of ``obs`` (one pass where they share a trunk)."""
        return self.actor_output(obs), self.value(obs)

    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample actions from the policy.

        Args:
            obs: observations ``[..., *obs_shape]``.
            generator: RNG for the sampling (must live on the model's device); the global RNG if
                ``None``. Giving each worker its own generator makes its actions reproducible.

        Returns:
            ``(action, log_prob)``: int64 actions ``[...]`` (discrete) or float actions
            ``[..., size]`` (continuous), and their log-probabilities ``[...]``.
        """
        out = self.actor_output(obs)
        if self.log_std is None:
            log_probs = torch.log_softmax(out, dim=-1)
            flat = log_probs.reshape(-1, log_probs.shape[-1])
            action = torch.multinomial(flat.exp(), 1, generator=generator)
            batch_shape = log_probs.shape[:-1]
            return action.reshape(batch_shape), flat.gather(-1, action).reshape(batch_shape)
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        action = out + self.log_std.exp() * noise
        return action, self._gaussian_log_prob(out, action)

    def evaluate(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(log_prob, entropy, value)``, each ``[...]``, of ``action`` at ``obs``."""
        out, value = self(obs)
        if self.log_std is None:
            log_probs = torch.log_softmax(out, dim=-1)
            log_prob = log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            return log_prob, entropy, value
        entropy = (0.5 + 0.5 * LOG_2PI + self.log_std).sum().expand(out.shape[:-1])
        return self._gaussian_log_prob(out, action), entropy, value

    def _gaussian_log_prob(self, mean: Tensor, action: Tensor) -> Tensor:
        """Log-density of ``action`` under N(mean, exp(log_std)^2), summed over components."""
        z = (action - mean) * torch.exp(-self.log_std)
        return (-0.5 * z.square() - self.log_std - 0.5 * LOG_2PI).sum(-1)


def orthogonal_(layer: nn.Linear | nn.Conv2d, gain: float) -> nn.Linear | nn.Conv2d:
    """Orthogonal weights with ``gain`` and zero bias, PPO's standard initialisation."""
    nn.init.orthogonal_(layer.weight, gain=gain)
    nn.init.zeros_(layer.bias)
    return layer


def count_parameters(module: nn.Module) -> int:
    """Total number of elements over all parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
