"""The trainer's side of the workers: spawn them, connect the scheme, talk to them, tear down.

:class:`WorkerPool` owns the worker processes, both pipes of each, and the trainer side of the
weight-sync scheme. It is a context manager whose exit always leaves nothing behind: workers are
told to stop, the scheme is shut down, stragglers are killed, every pipe end is closed.

A worker that dies or stops answering (end of file on its pipe, a time-out, a weightsync
``PeerDiedError``/``SyncTimeoutError`` naming it) is handled by :meth:`WorkerPool.drop` according
to ``on_worker_failure``: ``stop`` ends the run (:class:`RunStopped`), ``continue`` removes it
from the pool and from the scheme's sender and goes on with the survivors.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

import torch.multiprocessing as mp
from tensordict import TensorDict
from torch import nn

from experiments.worker import (
    COLLECT,
    FAILED,
    MODEL_ID,
    READY,
    REPORT,
    STOP,
    WorkerSpec,
    run_worker,
)
from weightsync import PeerDiedError, SyncTimeoutError, WeightSyncScheme

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT in this process (and in processes it starts meanwhile), if we may."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may change signal handlers; it also gets the Ctrl-C
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class RunStopped(Exception):
    """The run cannot go on: a worker failed under ``on_worker_failure=stop``, or none is left."""


class WorkerPool:
    """``len(specs)`` spawned workers kept in sync with ``policy`` by ``scheme``.

    Args:
        specs: one :class:`WorkerSpec` per worker.
        scheme: the weight-sync scheme, not yet initialised; it is pickled to every worker.
        policy: the trainer's policy, the model the scheme sends.
        timeout: seconds to wait for a worker's rollout or report before it counts as failed.
        startup_timeout: seconds for all workers to start (spawn, import torch, build models).
        on_worker_failure: ``"stop"`` or ``"continue"``.
    """

    def __init__(
        self,
        specs: list[WorkerSpec],
        scheme: WeightSyncScheme,
        policy: nn.Module,
        *,
        timeout: float,
        startup_timeout: float,
        on_worker_failure: str,
    ) -> None:
        self.specs = specs
        self.scheme = scheme
        self.policy = policy
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self.on_worker_failure = on_worker_failure
        self.active: list[int] = []
        self._processes: list[Any] = []
        self._data: list[Connection] = []
        self._weights: list[Connection] = []

    def __enter__(self) -> WorkerPool:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------- start-up
    def _start(self) -> None:
        """Spawn the workers, wait until each is ready, then connect the scheme."""
        ctx = mp.get_context("spawn")
        child_ends = []
        for spec in self.specs:
            data_here, data_there = ctx.Pipe()
            weights_here, weights_there = ctx.Pipe()
            self._data.append(data_here)
            self._weights.append(weights_here)
            child_ends += [data_there, weights_there]
            self._processes.append(
                ctx.Process(
                    target=run_worker,
                    args=(spec, self.scheme, weights_there, data_there),
                    name=f"weightsync-worker-{spec.worker_id}",
                    daemon=True,
                )
            )
        # Workers ignore SIGINT from birth (an ignored signal stays ignored across exec): Ctrl-C
        # reaches the trainer, which stops them in order, instead of killing them mid-message.
        with _sigint_ignored():
            for process in self._processes:
                process.start()
        for end in child_ends:  # only the workers hold these now, so their exit is our EOF
            end.close()
        self.active = [spec.worker_id for spec in self.specs]
        for w in self.active:
            if self._receive(w, self.startup_timeout, "start up") != READY:
                raise RunStopped(f"worker {w} sent something other than {READY!r} on start-up")
        self.scheme.init_on_sender(MODEL_ID, model=self.policy, pipes=self._weights)
        self.scheme.connect()

    # ------------------------------------------------------------------------------ commands
    def request_rollouts(self) -> None:
        """Ask every active worker for its next rollout (they collect in parallel)."""
        for w in list(self.active):
            try:
                self._data[w].send(COLLECT)
            except (OSError, EOFError) as err:
                self.drop([w], f"worker {w} cannot be reached ({err})")

    def gather(self) -> list[TensorDict]:
        """The rollout each active worker was asked for, in worker order (survivors only)."""
        rollouts = []
        for w in list(self.active):
            try:
                rollouts.append(self._unless_failed(w, pickle.loads(self._receive_bytes(w))))
            except RunStopped as err:
                self.drop([w], str(err))
        return rollouts

    def report(self) -> dict[int, tuple[int, str]]:
        """``{worker: (weight version, weights checksum)}`` of every active worker."""
        reports = {}
        for w in list(self.active):
            try:
                self._data[w].send(REPORT)
                reports[w] = self._receive(w, self.timeout, "report its weights")
            except (OSError, RunStopped) as err:
                self.drop([w], str(err))
        return reports

    # ------------------------------------------------------------------------------ failures
    def drop(self, workers: list[int], reason: str) -> None:
        """A worker failed: stop the run, or go on without it (``on_worker_failure``)."""
        workers = [w for w in workers if w in self.active]
        if not workers:
            return  # already handled (e.g. seen dead by gather, then by the scheme's send)
        if self.on_worker_failure == "stop":
            raise RunStopped(f"{reason} (run.on_worker_failure=stop)")
        log.warning("going on without worker(s) %s: %s", workers, reason)
        self.active = [w for w in self.active if w not in workers]
        self.scheme.get_sender().remove_workers(workers)
        self._release(workers)
        if not self.active:
            raise RunStopped(f"no workers left: {reason}")

    def _release(self, workers: list[int]) -> None:
        """Let go of dropped workers: close their data pipes and kill their processes."""
        for w in workers:
            self._data[w].close()
            self._processes[w].kill()

    def drop_dead(self) -> None:
        """Drop workers whose process has exited, before a send would find out the hard way."""
        for w in list(self.active):
            if not self._processes[w].is_alive():
                self.drop([w], self._died(w, "between rollouts"))

    def handle_sync_error(self, err: PeerDiedError | SyncTimeoutError) -> None:
        """Route a weightsync error that names workers to :meth:`drop`; re-raise any other."""
        if not err.workers:
            raise err
        self.drop(err.workers, str(err))

    # ------------------------------------------------------------------------------ internals
    def _receive(self, w: int, timeout: float, doing: str) -> Any:
        """The next object worker ``w`` sends; RunStopped if it is gone, silent or failed."""
        return self._unless_failed(w, self._read(w, timeout, doing, self._data[w].recv))

    @staticmethod
    def _unless_failed(w: int, message: Any) -> Any:
        """``message``, unless it is worker ``w``'s ``(FAILED, traceback)``: RunStopped with it."""
        if isinstance(message, tuple) and message[:1] == (FAILED,):
            raise RunStopped(f"worker {w} failed:\n{message[1].rstrip()}")
        return message

    def _receive_bytes(self, w: int) -> bytes:
        """The next raw message worker ``w`` sends (a pickled rollout)."""
        return self._read(w, self.timeout, "deliver a rollout", self._data[w].recv_bytes)

    def _read(self, w: int, timeout: float, doing: str, read: Any) -> Any:
        if not self._wait(self._data[w], timeout):
            raise RunStopped(f"worker {w} did not {doing} within {timeout:g} s")
        try:
            return read()
        except (EOFError, OSError):
            raise RunStopped(self._died(w, f"before it could {doing}")) from None

    @staticmethod
    def _wait(conn: Connection, timeout: float) -> bool:
        try:
            return conn.poll(timeout)
        except (EOFError, OSError):
            return True  # let the read that follows report the dead peer

    def _died(self, w: int, when: str) -> str:
        process = self._processes[w]
        process.join(timeout=1.0)
        code = process.exitcode
        how = "is still running" if code is None else f"exited with code {code}"
        return f"worker {w} is gone {when} (the process {how})"

    # ------------------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop every worker and release everything; safe to call more than once."""
        for w in self.active:
            with contextlib.suppress(OSError, EOFError):
                self._data[w].send(STOP)
        self.active = []
        with contextlib.suppress(Exception):  # tearing down must not hide the original error
            self.scheme.shutdown()
        for process in self._processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=JOIN_TIMEOUT_S)
            if process.is_alive():
                log.warning("%s did not stop in %g s; killing it", process.name, JOIN_TIMEOUT_S)
                process.kill()
                process.join(timeout=JOIN_TIMEOUT_S)
        for conn in self._data + self._weights:
            conn.close()
