"""Phase 1 of the loop, collect: the next batch of rollouts, in either mode, within the
staleness bound.

``run.mode=sync`` (the default): every worker delivers the rollout it was asked for, and is at
once asked for the next one, which it collects with the weights it holds while the trainer
learns (staleness 1). ``run.mode=async``: every worker is kept asked for
:data:`ASYNC_REQUESTS_PER_WORKER` rollouts, so it acts continuously and never waits for the
learner; a batch is the first ``num_workers`` rollouts to arrive, from whichever workers were
fastest (a fast worker may contribute two), so an update learns on as many frames in both modes.

A rollout's staleness is the number of learner updates its weight version lacks. With
``run.max_staleness=K`` a rollout more than ``K`` versions old is dropped (``run.on_stale=drop``,
and the batch is filled up with newer ones) or down-weighted (``downweight``: it counts
``(K + 1) / (staleness + 1)`` in the loss, through the trajectory's ``sample_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from experiments.crew import Crew
from experiments.rollout import Rollout, Trajectory

ASYNC_REQUESTS_PER_WORKER = 2  # one being collected, one asked for: a worker never waits


@dataclass(frozen=True)
class StalenessBound:
    """``run.max_staleness`` (None: no bound) and ``run.on_stale`` (``drop`` or ``downweight``)."""

    max_staleness: int | None = None
    on_stale: str = "drop"

    def weight(self, staleness: int) -> float:
        """How much a rollout ``staleness`` versions old counts: 1 within the bound; beyond it
        0 (dropped) or ``(K + 1) / (staleness + 1)``."""
        if self.max_staleness is None or staleness <= self.max_staleness:
            return 1.0
        if self.on_stale == "drop":
            return 0.0
        return (self.max_staleness + 1) / (staleness + 1)

    @property
    def weighs(self) -> bool:
        """Whether kept rollouts carry a ``sample_weight``."""
        return self.max_staleness is not None and self.on_stale == "downweight"


@dataclass
class Batch:
    """What one iteration learns on, and what collecting it took."""

    trajectory: Trajectory  # [T, B]: the kept rollouts side by side
    staleness: list[int]  # of each kept rollout
    num_rollouts: int  # kept
    dropped: int = 0  # rollouts beyond run.max_staleness, not learned on
    frames: int = 0  # collected, the dropped rollouts' included
    episode_returns: list[float] = field(default_factory=list)  # every episode that ended


class Collection:
    """Collects each iteration's :class:`Batch` from ``crew`` in ``mode`` (``sync``/``async``)
    within ``bound``, over ``num_iterations`` iterations."""

    def __init__(self, crew: Crew, mode: str, bound: StalenessBound, num_iterations: int):
        self.crew = crew
        self.mode = mode
        self.bound = bound
        self.num_iterations = num_iterations

    def start(self) -> None:
        """Ask for the first rollouts."""
        depth = ASYNC_REQUESTS_PER_WORKER if self.mode == "async" else 1
        for _ in range(depth):
            self.crew.request_rollouts()

    def next(self, iteration: int, num_updates: int) -> Batch:
        """Iteration ``iteration``'s batch; the learner has made ``num_updates`` updates."""
        kept: list[tuple[Trajectory, int]] = []
        batch = Batch(trajectory={}, staleness=[], num_rollouts=0)
        while not kept:  # only a batch whose every rollout was dropped goes round again
            wanted = len(self.crew.active)
            while len(kept) < wanted:
                for rollout in self._arrivals(wanted - len(kept)):
                    staleness = (
                        num_updates - self.crew.sync.updates_in_version[rollout.policy_version]
                    )
                    batch.frames += rollout.frames
                    batch.episode_returns += rollout.episode_returns.tolist()
                    weight = self.bound.weight(staleness)
                    if weight == 0.0:
                        batch.dropped += 1
                        continue
                    trajectory = rollout.trajectory
                    if self.bound.weighs:
                        trajectory["sample_weight"] = torch.full_like(trajectory["reward"], weight)
                    kept.append((trajectory, staleness))
                if self.mode == "sync":
                    break  # one rollout per worker: what was dropped is asked for again below
            if self.mode == "sync" and (not kept or iteration < self.num_iterations):
                self.crew.request_rollouts()
        batch.trajectory = {key: torch.cat([t[key] for t, _ in kept], dim=1) for key in kept[0][0]}
        batch.staleness = [s for _, s in kept]
        batch.num_rollouts = len(kept)
        return batch

    def finish(self) -> None:
        """Take in the rollouts still asked for (async), so the workers' reports come next."""
        self.crew.drain()

    def _arrivals(self, n: int) -> list[Rollout]:
        if self.mode == "async":
            return self.crew.take(n)
        return self.crew.gather()
