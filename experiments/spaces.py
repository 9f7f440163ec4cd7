"""What a policy needs to know about an environment: the shape of its observations and actions.

Environments describe themselves with :class:`EnvSpaces` before any worker starts
(``describe(...)`` on each env class), so the model can be sized and checked against them in the
trainer: pixel observations (uint8 ``[C, H, W]``) call for a CNN, vectors for an MLP; discrete
actions for a categorical policy, continuous ones (a Box) for a Gaussian. The classes here are
plain, picklable records, so that they travel to spawned workers inside a policy factory and
carry no dependency on Gymnasium.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ObservationKind = Literal["vector", "pixels"]
ActionKind = Literal["discrete", "continuous"]


@dataclass(frozen=True)
class ObservationSpace:
    """``kind="vector"``: float32 ``shape == (D,)``; ``"pixels"``: uint8 ``shape == (C, H, W)``."""

    kind: ObservationKind
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ActionSpace:
    """``kind="discrete"``: one of ``size`` actions (int64); ``"continuous"``: a float32 vector
    of ``size`` components."""

    kind: ActionKind
    size: int


@dataclass(frozen=True)
class EnvSpaces:
    """An environment's observation and action spaces, and how to name them in a message."""

    observation: ObservationSpace
    action: ActionSpace
    name: str  # e.g. "ALE/Pong-v5 (observations Box(0, 255, (4, 84, 84), uint8), ...)"


class UnsupportedSpaceError(ValueError):
    """An environment whose spaces no policy here can act in (a Dict, a MultiDiscrete, ...)."""
