"""The trainer's workers and the scheme that keeps them in sync, with one failure policy for both.

:class:`Crew` is what the training loop talks to: it asks every live worker for a rollout and
gathers them, owns the :class:`~experiments.sync.SyncStep` that pushes the weights, and asks for
the workers' final reports. It works with any :class:`~experiments.workers.Workers` (spawned
here or launched as ranks). A worker that is lost, whether seen by a rollout that did not come
(``run.rollout_timeout``), by its process exiting, or by the scheme (a weightsync
``PeerDiedError``/``SyncTimeoutError`` naming it), is handled in one place, :meth:`Crew.drop`,
as ``on_worker_failure`` says: ``stop`` ends the run (:class:`RunStopped`), ``continue`` goes
on with the survivors, removed from the workers and from the scheme's sender.

A ``Crew`` is a context manager whose exit always leaves nothing behind: workers are told to
stop, the scheme is shut down, then the workers' resources are released.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from torch import nn

from experiments.actor import Command
from experiments.rollout import Rollout
from experiments.sync import SyncStep
from experiments.workers import WorkerLost, Workers
from weightsync import WeightSyncScheme

log = logging.getLogger(__name__)

POLL_S = 0.05  # how long take() waits for a rollout before it looks for overdue workers


class RunStopped(Exception):
    """The run cannot go on: a worker failed under ``on_worker_failure=stop``, or none is left."""


class Crew:
    """``workers`` kept in sync with ``policy`` by ``scheme``.

    Args:
        workers: the workers, not yet started.
        scheme: the trainer's weight-sync scheme, not yet initialised.
        policy: the trainer's policy, the model the scheme sends.
        rollout_timeout: seconds a worker may take to deliver a rollout or a report before it
            counts as lost.
        on_worker_failure: ``"stop"`` or ``"continue"``.
    """

    def __init__(
        self,
        workers: Workers,
        scheme: WeightSyncScheme,
        policy: nn.Module,
        *,
        rollout_timeout: float,
        on_worker_failure: str,
    ) -> None:
        self.workers = workers
        self.rollout_timeout = rollout_timeout
        self.on_worker_failure = on_worker_failure
        self.active: list[int] = []
        self._requested: dict[int, deque[float]] = defaultdict(deque)  # when each was asked for
        self.sync = SyncStep(scheme, policy, on_failure=self.drop, before_send=self.drop_dead)

    def __enter__(self) -> Crew:
        try:
            endpoints = self.workers.start()
            self.active = list(range(self.workers.num_workers))
            self.sync.connect(self.active, **endpoints)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ commands
    def request_rollouts(self) -> None:
        """Ask every live worker for its next rollout (they collect in parallel)."""
        self._each(self._request)

    def gather(self) -> list[Rollout]:
        """The rollout each live worker was asked for, in worker order (survivors only)."""
        return self._each(self._receive)

    def take(self, n: int) -> list[Rollout]:
        """The next ``n`` rollouts to arrive, from whichever workers deliver first; each worker
        that delivers is at once asked for one more, so it never waits (``run.mode=async``).
        A worker whose oldest request is ``rollout_timeout`` s old counts as lost."""
        rollouts: list[Rollout] = []
        while len(rollouts) < n:
            for w in self.workers.wait_any(self._asked(), POLL_S):
                if w in self.active:  # not dropped meanwhile
                    rollouts += self._each(self._receive, [w])
                    self._each(self._request, [w])
            now = time.monotonic()
            for w in self._asked():
                if now - self._requested[w][0] > self.rollout_timeout:
                    self.drop([w], f"worker {w} did not deliver a rollout within "
                                   f"{self.rollout_timeout:g} s")  # fmt: skip
        return rollouts

    def drain(self) -> int:
        """Receive (and discard) every rollout asked for and not yet taken; how many."""
        return sum(self._each(self._receive_all))

    def _request(self, w: int) -> None:
        self.workers.send(w, Command.COLLECT)
        self._requested[w].append(time.monotonic())

    def _receive(self, w: int) -> Rollout:
        rollout = self.workers.receive_rollout(w, self.rollout_timeout)
        self._requested[w].popleft()
        return rollout

    def _receive_all(self, w: int) -> int:
        count = len(self._requested[w])
        while self._requested[w]:
            self._receive(w)
        return count

    def _asked(self) -> list[int]:
        """Live workers with rollouts asked for and not yet received."""
        return [w for w in self.active if self._requested[w]]

    def report(self) -> dict[int, tuple[int, str]]:
        """``{worker: (weight version, weights checksum)}`` of every live worker."""

        reports = {}

        def ask(w: int) -> None:
            self.workers.send(w, Command.REPORT)
            reports[w] = self.workers.receive_report(w, self.rollout_timeout)

        self._each(ask)
        return reports

    def _each(self, call: Callable[[int], Any], workers: list[int] | None = None) -> list[Any]:
        """``call(w)`` for every live worker (of ``workers``), in order; a lost one goes to
        :meth:`drop`."""
        results = []
        for w in list(self.active if workers is None else workers):
            try:
                results.append(call(w))
            except WorkerLost as err:
                self.drop([err.worker], str(err))
        return results

    # ------------------------------------------------------------------------------ failures
    def drop(self, workers: list[int], reason: str) -> None:
        """Workers failed: stop the run, or go on without them (``on_worker_failure``)."""
        workers = [w for w in workers if w in self.active]
        if not workers:
            return  # already handled (e.g. seen dead by gather, then by the scheme's send)
        if self.on_worker_failure == "stop":
            raise RunStopped(f"{reason} (run.on_worker_failure=stop)")
        log.warning("going on without worker(s) %s: %s", workers, reason)
        self.active = [w for w in self.active if w not in workers]
        self.sync.remove(workers)
        for w in workers:
            self.workers.release(w)
        if not self.active:
            raise RunStopped(f"no workers left: {reason}")

    def drop_dead(self) -> None:
        """Drop workers known to be gone, before a send would find out the hard way."""
        for w in list(self.active):
            reason = self.workers.exit_reason(w)
            if reason is not None:
                self.drop([w], reason)

    # ------------------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Tell every live worker to stop, shut the scheme down, release the workers."""
        for w in self.active:
            with contextlib.suppress(WorkerLost):
                self.workers.send(w, Command.STOP)
        self.active = []
        try:
            self.sync.shutdown()
        except Exception as err:  # tearing down must not hide the original error
            log.warning("scheme shutdown failed: %s", err)
        self.workers.close()
