"""Actor-critics for pixel observations: the Nature DQN CNN and the IMPALA ResNet.

Both read uint8 frames ``[..., C, H, W]`` (Atari: 4 stacked 84x84 grey frames) and scale them
to [0, 1] themselves, so frames cross from workers to the trainer as bytes. Actor and critic
share the convolutional trunk, as in the papers and in CleanRL's and SB3's Atari agents; the
heads are orthogonally initialised (actor gain 0.01, critic 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor, nn

from experiments.models.policy import Policy, orthogonal_
from experiments.spaces import ActionSpace, ObservationSpace


class PixelPolicy(Policy):
    """A trunk shared by an actor head and a critic head: ``convs`` (ending in a flatten),
    then a ``hidden_size`` ReLU layer (orthogonally initialised with gain sqrt(2) if
    ``orthogonal_init``); subclasses build the convolutions."""

    observation_kind = "pixels"

    def __init__(
        self,
        observation: ObservationSpace,
        action: ActionSpace,
        convs: nn.Sequential,
        hidden_size: int,
        log_std_init: float,
        orthogonal_init: bool,
    ) -> None:
        super().__init__(action, log_std_init)
        with torch.no_grad():
            flat = convs(torch.zeros(1, *observation.shape)).shape[-1]
        hidden = nn.Linear(flat, hidden_size)
        if orthogonal_init:
            orthogonal_(hidden, math.sqrt(2.0))
        self.trunk = nn.Sequential(convs, hidden, nn.ReLU())
        self.actor = orthogonal_(nn.Linear(hidden_size, action.size), 0.01)
        self.critic = orthogonal_(nn.Linear(hidden_size, 1), 1.0)

    def features(self, obs: Tensor) -> Tensor:
        """The trunk's features ``[..., F]`` of uint8 frames ``[..., C, H, W]``."""
        batch_shape = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:]).float().div_(255.0)
        return self.trunk(x).reshape(*batch_shape, -1)

    def actor_output(self, obs: Tensor) -> Tensor:
        return self.actor(self.features(obs))

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(self.features(obs)).squeeze(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(obs)
        return self.actor(features), self.critic(features).squeeze(-1)


class NatureCNN(PixelPolicy):
    """The DQN Nature paper's network (Mnih et al. 2015): three convolutions (32 8x8/4, 64 4x4/2,
    64 3x3/1) and a 512-unit layer; about 1.7M parameters on 4x84x84 frames.

    Example:
        >>> import torch
        >>> from experiments.spaces import ActionSpace, ObservationSpace
        >>> policy = NatureCNN(ObservationSpace("pixels", (4, 84, 84)), ActionSpace("discrete", 6))
        >>> policy.act(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))[0].shape
        torch.Size([2])
    """

    def __init__(
        self,
        observation: ObservationSpace,
        action: ActionSpace,
        hidden_size: int = 512,
        log_std_init: float = 0.0,
    ) -> None:
        gain = math.sqrt(2.0)
        channels = observation.shape[0]
        convs = nn.Sequential(
            orthogonal_(nn.Conv2d(channels, 32, 8, stride=4), gain), nn.ReLU(),
            orthogonal_(nn.Conv2d(32, 64, 4, stride=2), gain), nn.ReLU(),
            orthogonal_(nn.Conv2d(64, 64, 3, stride=1), gain), nn.ReLU(),
            nn.Flatten(),
        )  # fmt: skip
        super().__init__(observation, action, convs, hidden_size, log_std_init, True)


class _ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions keeping the channel count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv1(torch.relu(self.conv0(torch.relu(x))))


def _impala_stack(in_channels: int, out_channels: int) -> nn.Sequential:
    """One IMPALA stage: a convolution, a 3x3 max-pool of stride 2, two residual blocks."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        _ResidualBlock(out_channels),
        _ResidualBlock(out_channels),
    )


class ImpalaCNN(PixelPolicy):
    """The IMPALA paper's deep ResNet (Espeholt et al. 2018): stages of ``channels`` (16, 32,
    32) convolutions with residual blocks, then a 256-unit layer; about 1M parameters on
    4x84x84 frames (most of them in that layer), 15 convolutions deep.

    Example:
        >>> import torch
        >>> from experiments.spaces import ActionSpace, ObservationSpace
        >>> policy = ImpalaCNN(ObservationSpace("pixels", (4, 84, 84)), ActionSpace("discrete", 6))
        >>> policy.act(torch.zeros(2, 4, 84, 84, dtype=torch.uint8))[0].shape
        torch.Size([2])
    """

    def __init__(
        self,
        observation: ObservationSpace,
        action: ActionSpace,
        channels: Sequence[int] = (16, 32, 32),
        hidden_size: int = 256,
        log_std_init: float = 0.0,
    ) -> None:
        sizes = [observation.shape[0], *channels]
        stages = [_impala_stack(c_in, c_out) for c_in, c_out in pairwise(sizes)]
        convs = nn.Sequential(*stages, nn.ReLU(), nn.Flatten())
        super().__init__(observation, action, convs, hidden_size, log_std_init, False)
