"""The collect phase's staleness bound: which rollouts are dropped or down-weighted, exactly.

The rollouts come from :class:`ScriptedWorkers`, an in-process implementation of the ``Workers``
protocol that delivers rollouts whose weight versions the test chooses (forced old versions);
the crew, the sync step and the collection around it are the real ones, with the real
``none`` scheme (nothing to send). What is tested is the bookkeeping, not a transport.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from experiments.actor import Command
from experiments.collection import Collection, StalenessBound
from experiments.crew import Crew
from experiments.models import ActorCritic
from experiments.rollout import Rollout
from weightsync import NoWeightSyncScheme

T, B = 3, 2  # steps and environments per rollout


class ScriptedWorkers:
    """Workers that answer each COLLECT with the next rollout of their script (versions)."""

    def __init__(self, versions: list[list[int]]) -> None:
        self.num_workers = len(versions)
        self.scripts = [deque(v) for v in versions]
        self.ready: list[deque[Rollout]] = [deque() for _ in versions]

    def start(self) -> dict[str, Any]:
        return {}

    def send(self, worker: int, command: Command) -> None:
        if command == Command.COLLECT:
            version = self.scripts[worker].popleft()
            trajectory = {
                "reward": torch.zeros(T, B),
                "marker": torch.full((T, B), version),
            }
            self.ready[worker].append(Rollout(trajectory, torch.tensor([1.0]), version))

    def wait_any(self, workers: list[int], timeout: float) -> list[int]:
        return [w for w in workers if self.ready[w]]

    def receive_rollout(self, worker: int, timeout: float) -> Rollout:
        return self.ready[worker].popleft()

    def receive_report(self, worker: int, timeout: float) -> tuple[int, str]:
        raise AssertionError("not asked for")

    def exit_reason(self, worker: int) -> str | None:
        return None

    def release(self, worker: int) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def collection() -> Iterator[Callable[..., Collection]]:
    """``make(versions, mode, bound)``: a started collection over scripted workers whose
    rollouts carry ``versions`` (per worker, in order); every crew is closed afterwards."""
    with contextlib.ExitStack() as crews:

        def make(versions: list[list[int]], mode: str, bound: StalenessBound) -> Collection:
            crew = Crew(ScriptedWorkers(versions), NoWeightSyncScheme(), ActorCritic(4, 2),
                        rollout_timeout=1.0, on_worker_failure="stop")  # fmt: skip
            crews.enter_context(crew)
            # Version v holds v updates: a rollout of version v is (updates - v) updates old.
            crew.sync.updates_in_version.update({v: v for v in range(20)})
            made = Collection(crew, mode, bound, num_iterations=10)
            made.start()
            return made

        yield make


def _versions(batch) -> list[int]:
    return sorted({int(v) for v in batch.trajectory["marker"].unique()})


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_max_staleness_drops_exactly_the_rollouts_older_than_the_bound(collection, mode) -> None:
    # After 5 updates, versions 1, 2 are 4 and 3 updates old (> 2: dropped); 3, 4, 5 are kept.
    versions = [[1, 3, 5, 5, 5], [2, 4, 5, 5, 5]]
    first = collection(versions, mode, StalenessBound(max_staleness=2)).next(1, num_updates=5)
    assert first.dropped == 2
    assert first.num_rollouts == 2 and _versions(first) == [3, 4]
    assert sorted(first.staleness) == [1, 2]
    assert first.frames == 4 * T * B  # the dropped rollouts were collected all the same
    assert len(first.episode_returns) == 4
    assert "sample_weight" not in first.trajectory


def test_nothing_is_dropped_without_a_bound(collection) -> None:
    unbounded = collection([[0, 0], [0, 0]], "sync", StalenessBound(max_staleness=None))
    batch = unbounded.next(1, num_updates=12)
    assert (batch.dropped, batch.staleness) == (0, [12, 12])


def test_downweight_keeps_old_rollouts_at_k_plus_1_over_staleness_plus_1(collection) -> None:
    bound = StalenessBound(max_staleness=1, on_stale="downweight")
    batch = collection([[4, 4], [1, 1]], "sync", bound).next(1, num_updates=5)  # staleness 1, 4
    assert batch.dropped == 0
    weights = batch.trajectory["sample_weight"]
    assert torch.equal(weights[:, :B], torch.ones(T, B))
    torch.testing.assert_close(weights[:, B:], torch.full((T, B), 2 / 5))


@pytest.mark.parametrize(
    ("bound", "staleness", "weight"),
    [
        (StalenessBound(None), 100, 1.0),
        (StalenessBound(0), 0, 1.0),
        (StalenessBound(0), 1, 0.0),
        (StalenessBound(3), 3, 1.0),
        (StalenessBound(3), 4, 0.0),
        (StalenessBound(3, "downweight"), 7, 0.5),
    ],
)
def test_staleness_bound_weights(bound: StalenessBound, staleness: int, weight: float) -> None:
    assert bound.weight(staleness) == weight


def test_a_sync_batch_whose_every_rollout_is_dropped_is_collected_again(collection) -> None:
    batch = collection([[1, 5, 5], [0, 5, 5]], "sync", StalenessBound(2)).next(1, num_updates=5)
    assert batch.dropped == 2 and _versions(batch) == [5] and batch.staleness == [0, 0]
