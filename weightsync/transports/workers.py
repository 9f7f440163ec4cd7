"""The trainer's bookkeeping of its workers: who is live, who was removed, who has died, and the
one error that names every worker a wait failed on.

Every trainer-side transport keeps the same two things, whatever moves the bytes:

* a :class:`WorkerSet`: the worker ids (``0..n-1``, in the order the workers were given), those
  removed (``remove_workers``: dead or retired, never waited for again), the check that a send
  names only live workers, and, where the trainer knows them, the workers' processes: a wait
  then also ends when one of them exits, and the error says how (:meth:`WorkerSet.exit_of`), so a
  worker that dies before it ever connected is named at once instead of waited for;
* a :class:`Failures`: what one wait on several workers found (dead, silent, refused), raised as
  one error naming each of them (:class:`~weightsync.PeerDiedError` when any is dead,
  :class:`~weightsync.SyncTimeoutError` when any is silent, else
  :class:`~weightsync.WorkerRejectedError` for the refusals), with ``.workers`` for recovery.
"""

from __future__ import annotations

import contextlib
import select
import signal
from collections.abc import Sequence
from typing import Any, Protocol

from weightsync.errors import PeerDiedError, SyncTimeoutError, WeightSyncError, WorkerRejectedError


class ProcessHandle(Protocol):
    """What the trainer may know of a worker's process: a ``multiprocessing.Process`` is one.

    ``sentinel`` becomes readable when the process ends; ``exitcode`` is None while it runs.
    A handle may also offer ``last_words() -> str | None``: what the process reported before it
    ended (a TorchRL collector worker sends its exception over its own pipe), added to the error.
    """

    pid: int | None
    sentinel: int

    @property
    def exitcode(self) -> int | None: ...

    def join(self, timeout: float | None = None) -> None: ...


def describe_exit(process: ProcessHandle) -> str | None:
    """How ``process`` ended (``"process 42 exited with code 1"``, ``"... was killed by SIGKILL"``),
    with what it reported before, if anything; None while it runs."""
    code = process.exitcode
    if code is None and is_readable(process.sentinel):  # it has ended, and is not reaped yet
        with contextlib.suppress(Exception):  # join() is for the process's parent only
            process.join(1.0)
        code = process.exitcode
    if code is None:
        return None
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    said = None
    last_words = getattr(process, "last_words", None)
    if callable(last_words):
        with contextlib.suppress(Exception):  # what it said is a bonus: the exit is the news
            said = last_words()
    return f"process {process.pid} {how}" + (f"; it reported: {said}" if said else "")


def is_readable(fd: int) -> bool:
    """Whether ``fd`` (a pidfd, a process sentinel) is readable now: its process has ended."""
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):  # closed: the handle was released, the process is gone
        return True


class WorkerSet:
    """The ids of a trainer's workers, which are live, and their processes where known.

    Args:
        num_workers: how many workers there are at first (ids ``0..num_workers-1``).
    """

    def __init__(self, num_workers: int = 0):
        self._count = num_workers
        self.removed: set[int] = set()
        self._processes: Sequence[Any] | None = None

    def add(self) -> int:
        """Count one more worker; returns its id."""
        self._count += 1
        return self._count - 1

    def __len__(self) -> int:
        """Every worker ever counted, removed ones included."""
        return self._count

    @property
    def live(self) -> list[int]:
        return [w for w in range(self._count) if w not in self.removed]

    def is_live(self, worker: int) -> bool:
        return 0 <= worker < self._count and worker not in self.removed

    def targets(self, worker_ids: list[int] | None) -> list[int]:
        """The workers a send goes to: ``worker_ids`` (sorted, once each), or every live one
        when None. ValueError naming the unknown or removed ones, before anything moves."""
        live = self.live
        if worker_ids is None:
            return live
        targets = sorted(set(worker_ids))
        unknown = [w for w in targets if not self.is_live(w)]
        if unknown:
            raise ValueError(
                f"unknown or removed worker id(s) {unknown}: the live workers are {live}"
            )
        return targets

    def remove(self, worker_ids: list[int]) -> list[int]:
        """Go on without these workers; returns those that were live until now."""
        newly = [w for w in worker_ids if self.is_live(w)]
        self.removed.update(worker_ids)
        return newly

    def watch(self, processes: Sequence[Any] | None) -> None:
        """The workers' processes, indexed by worker id (``multiprocessing.Process`` or any
        :class:`ProcessHandle`). The sequence is read at each wait, so it may be filled after
        this call (a TorchRL collector starts its processes after the scheme is set up)."""
        self._processes = processes

    def process(self, worker: int) -> ProcessHandle | None:
        """Worker ``worker``'s process, once the trainer knows it (and it has started)."""
        processes = self._processes
        if processes is None or not 0 <= worker < len(processes):
            return None
        handle = processes[worker]
        return handle if getattr(handle, "sentinel", None) is not None else None

    def exit_of(self, worker: int) -> str | None:
        """How worker ``worker``'s process ended (see :func:`describe_exit`); None while it
        runs or when its process is not known."""
        handle = self.process(worker)
        return None if handle is None else describe_exit(handle)


class Failures:
    """What one wait on several workers found, raised as one error naming each of them.

    Each failure is recorded with the message that explains it (the transport's words: what
    the worker did not do, within what time). :meth:`error` builds the error to raise."""

    def __init__(self) -> None:
        self.dead: dict[int, str] = {}
        self.silent: dict[int, str] = {}
        self.refused: dict[int, str] = {}

    def add_dead(self, worker: int, message: str) -> None:
        self.dead[worker] = message

    def add_silent(self, worker: int, message: str) -> None:
        self.silent[worker] = message

    def add_refused(self, worker: int, reason: str) -> None:
        self.refused[worker] = reason

    def add_error(self, error: PeerDiedError | SyncTimeoutError) -> None:
        """An error a link raised for one or more workers, kept as theirs."""
        record = self.dead if isinstance(error, PeerDiedError) else self.silent
        for worker in error.workers or [-1]:
            record[worker] = str(error)

    @property
    def failed(self) -> list[int]:
        """The workers that are dead or silent (not those that only refused)."""
        return sorted({*self.dead, *self.silent} - {-1})

    def __bool__(self) -> bool:
        return bool(self.dead or self.silent or self.refused)

    def error(self, model_id: str, version: int) -> WeightSyncError | None:
        """One error naming every failure (None when there is none): PeerDiedError when a worker
        is dead, else SyncTimeoutError when one is silent (both name the dead and the silent
        workers alike), else WorkerRejectedError with each refusal."""
        if self.dead or self.silent:
            messages = list(dict.fromkeys([*self.dead.values(), *self.silent.values()]))
            kind = PeerDiedError if self.dead else SyncTimeoutError
            return kind("; ".join(messages), workers=self.failed)
        if self.refused:
            return WorkerRejectedError(model_id, version, dict(self.refused))
        return None

    def raise_any(self, model_id: str, version: int) -> None:
        error = self.error(model_id, version)
        if error is not None:
            raise error
