"""The trainer's view of its workers, whoever launched them: the :class:`Workers` interface.

Two launchers implement it: :class:`~experiments.pool.WorkerPool` spawns the workers here and
talks to them over pipes; :class:`~experiments.distributed.RankPool` finds them as the other
ranks of a torchrun/Slurm launch and talks to them over c10d links. Both run the same actor
loop on the worker side (``experiments/actor.py``), and the training loop sees only this
interface, through :class:`~experiments.crew.Crew`, which decides what a lost worker means.

Each call concerns one worker; a worker that is gone or silent raises :class:`WorkerLost`
naming it, and every other worker is unaffected.
"""

from __future__ import annotations

from typing import Any, Protocol

from experiments.actor import Command
from experiments.rollout import Rollout


class WorkerLost(Exception):
    """Worker ``worker`` is gone or did not answer in time; the message says which and why."""

    def __init__(self, worker: int, reason: str) -> None:
        super().__init__(reason)
        self.worker = worker


class Workers(Protocol):
    """Workers ``0 .. num_workers - 1``, each running :func:`experiments.actor.run_actor`."""

    num_workers: int

    def start(self) -> dict[str, Any]:
        """Start (or find) every worker and wait until each is built; return what the trainer's
        ``scheme.init_on_sender`` needs to reach them (e.g. their weight pipes). A worker that
        does not come up raises :class:`~experiments.crew.RunStopped`."""

    def send(self, worker: int, command: Command) -> None:
        """Send ``command`` to ``worker``."""

    def wait_any(self, workers: list[int], timeout: float) -> list[int]:
        """Those of ``workers`` that have sent something (or are gone: the next receive says
        so), waiting up to ``timeout`` s for the first; empty if none did."""

    def receive_rollout(self, worker: int, timeout: float) -> Rollout:
        """The rollout ``worker`` was asked for."""

    def receive_report(self, worker: int, timeout: float) -> tuple[int, str]:
        """``worker``'s answer to ``REPORT``: ``(weight version, weights checksum)``."""

    def exit_reason(self, worker: int) -> str | None:
        """Why ``worker`` is known to be gone (e.g. its process exited), or None if it may
        still be alive (a launcher that cannot tell always says None)."""

    def release(self, worker: int) -> None:
        """Let go of a worker the run goes on without (never talk to it again)."""

    def close(self) -> None:
        """Release everything; workers told ``STOP`` exit, any others are ended if possible.
        Safe to call more than once."""
