"""Actor-critic policy for discrete-action environments.

Actor and critic are separate MLPs, so that the value loss cannot disturb the policy features
(the usual choice for small control tasks), and the trunk width and depth are free so that the
same class serves both learning runs (a few thousand parameters) and weight-sync-heavy runs
(hundreds of millions of parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def _mlp(
    in_size: int,
    hidden_sizes: Sequence[int],
    out_size: int,
    activation: type[nn.Module],
    out_gain: float,
    orthogonal_init: bool,
) -> nn.Sequential:
    """An MLP whose hidden layers are followed by ``activation`` and whose output is linear.

    With ``orthogonal_init`` the weights are orthogonal (gain sqrt(2) for hidden layers,
    ``out_gain`` for the output) and biases zero, the standard PPO initialisation.
    """
    sizes = [in_size, *hidden_sizes]
    layers: list[nn.Module] = []
    for fan_in, fan_out in pairwise(sizes):
        layers += [_linear(fan_in, fan_out, math.sqrt(2.0), orthogonal_init), activation()]
    layers.append(_linear(sizes[-1], out_size, out_gain, orthogonal_init))
    return nn.Sequential(*layers)


def _linear(fan_in: int, fan_out: int, gain: float, orthogonal_init: bool) -> nn.Linear:
    """A linear layer, orthogonally initialised with ``gain`` if ``orthogonal_init``."""
    layer = nn.Linear(fan_in, fan_out)
    if orthogonal_init:
        nn.init.orthogonal_(layer.weight, gain=gain)
        nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """Categorical policy (actor) and state-value function (critic) with separate MLP trunks.

    Args:
        obs_size: size of the flat observation vector.
        num_actions: number of discrete actions.
        hidden_sizes: widths of the hidden layers, shared by both trunks.
        activation: one of ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"``, ``"silu"``.
        orthogonal_init: use orthogonal initialisation (policy-output gain 0.01 so the initial
            policy is close to uniform). Turning it off speeds up building very large models
            on CPU, where orthogonalising many large matrices takes seconds.
    """

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        orthogonal_init: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        self.actor = _mlp(obs_size, hidden_sizes, num_actions, act, 0.01, orthogonal_init)
        self.critic = _mlp(obs_size, hidden_sizes, 1, act, 1.0, orthogonal_init)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Return action logits ``[..., num_actions]`` and values ``[...]`` for ``obs [..., D]``."""
        return self.actor(obs), self.value(obs)

    def value(self, obs: Tensor) -> Tensor:
        """Return the critic's state values ``[...]`` for ``obs [..., D]``."""
        return self.critic(obs).squeeze(-1)

    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Sample actions from the policy.

        Args:
            obs: observations ``[..., D]``.
            generator: RNG for the sampling (must live on the model's device); the global RNG if
                ``None``. Giving each worker its own generator makes its actions reproducible.

        Returns:
            ``(action, log_prob)``: int64 actions ``[...]`` and their log-probabilities ``[...]``.
        """
        log_probs = torch.log_softmax(self.actor(obs), dim=-1)
        flat = log_probs.reshape(-1, log_probs.shape[-1])
        action = torch.multinomial(flat.exp(), 1, generator=generator)
        log_prob = flat.gather(-1, action)
        batch_shape = log_probs.shape[:-1]
        return action.reshape(batch_shape), log_prob.reshape(batch_shape)

    def evaluate(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(log_prob, entropy, value)``, each ``[...]``, of ``action [...]`` at ``obs``."""
        log_probs = torch.log_softmax(self.actor(obs), dim=-1)
        log_prob = log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy, self.value(obs)


def count_parameters(module: nn.Module) -> int:
    """Total number of elements over all parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
