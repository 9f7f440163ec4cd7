"""Actor-critic MLP for vector observations, categorical or Gaussian as the env's actions are.

Actor and critic are separate MLPs, so that the value loss cannot disturb the policy features
(the usual choice for small control tasks), and the trunk width and depth are free so that the
same class serves both learning runs (a few thousand parameters) and weight-sync-heavy runs
(hundreds of millions of parameters).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

from torch import Tensor, nn

from experiments.models.policy import Policy, orthogonal_
from experiments.spaces import ActionSpace, ObservationSpace

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
    return orthogonal_(layer, gain) if orthogonal_init else layer


class ActorCritic(Policy):
    """Policy (actor) and state-value function (critic) with separate MLP trunks.

    The actor outputs logits for discrete actions, or the mean of a Gaussian with a
    state-independent ``log_std`` for continuous ones (see :class:`Policy`).

    Args:
        observation: the env's observations, a vector (``kind="vector"``); an int ``D`` is
            short for a vector of ``D`` floats.
        action: the env's actions; an int ``N`` is short for ``N`` discrete actions.
        hidden_sizes: widths of the hidden layers, shared by both trunks.
        activation: one of ``"tanh"``, ``"relu"``, ``"elu"``, ``"gelu"``, ``"silu"``.
        orthogonal_init: use orthogonal initialisation (policy-output gain 0.01 so the initial
            policy is close to uniform, or its mean close to 0). Turning it off speeds up
            building very large models on CPU, where orthogonalising large matrices takes
            seconds.
        log_std_init: initial log standard deviation of a Gaussian policy.

    Example:
        >>> import torch
        >>> from experiments.spaces import ActionSpace, ObservationSpace
        >>> policy = ActorCritic(4, 2)  # CartPole: 4 floats in, 2 discrete actions
        >>> action, log_prob = policy.act(torch.zeros(8, 4))
        >>> action.shape, log_prob.shape
        (torch.Size([8]), torch.Size([8]))
        >>> cheetah = ActorCritic(ObservationSpace("vector", (17,)), ActionSpace("continuous", 6))
        >>> cheetah.act(torch.zeros(8, 17))[0].shape  # Gaussian: one float per action component
        torch.Size([8, 6])
    """

    observation_kind = "vector"

    def __init__(
        self,
        observation: ObservationSpace | int,
        action: ActionSpace | int,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        orthogonal_init: bool = True,
        log_std_init: float = 0.0,
    ) -> None:
        if isinstance(observation, int):
            observation = ObservationSpace("vector", (observation,))
        if isinstance(action, int):
            action = ActionSpace("discrete", action)
        super().__init__(action, log_std_init)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {list(ACTIVATIONS)}")
        act = ACTIVATIONS[activation]
        (obs_size,) = observation.shape
        self.actor = _mlp(obs_size, hidden_sizes, action.size, act, 0.01, orthogonal_init)
        self.critic = _mlp(obs_size, hidden_sizes, 1, act, 1.0, orthogonal_init)

    def actor_output(self, obs: Tensor) -> Tensor:
        """Logits or action means ``[..., action.size]`` for ``obs [..., D]``."""
        return self.actor(obs)

    def value(self, obs: Tensor) -> Tensor:
        """The critic's state values ``[...]`` for ``obs [..., D]``."""
        return self.critic(obs).squeeze(-1)
