"""Workers spawned here: :class:`WorkerPool`, the :class:`~experiments.workers.Workers` of a
plain ``python run.py``, and the worker process's end of its pipes.

Each worker is a spawned process running :func:`experiments.actor.run_actor` with two pipes to
the trainer: the **weight pipe** belongs to the weight-sync scheme (its ``init_on_receiver(...,
pipe=...)`` here, ``init_on_sender(..., pipes=...)`` on the trainer), the **data pipe** carries
commands and answers (:class:`PipeChannel`). Rollouts are pickled by value: no shared-memory
segment per batch that a crash could leak.

The pool's :meth:`~WorkerPool.close` always leaves nothing behind: stragglers are killed and
every pipe end is closed. A worker exits on ``STOP``, when the scheme is shut down, and when the
trainer is gone: end of file on either pipe (``EOFError``, ``PeerDiedError``) or a broken pipe
when it sends. A worker whose env or policy raises sends ``(FAILED, traceback)`` in place of the
answer the trainer waits for and exits; the trainer's :class:`WorkerLost` carries the traceback.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any

import torch.multiprocessing as mp

from experiments.actor import ActorSpec, Command, run_actor
from experiments.crew import RunStopped
from experiments.rollout import Rollout
from experiments.workers import WorkerLost
from weightsync import PeerDiedError, WeightSyncScheme

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0
READY = "ready"
FAILED = "failed"  # worker -> trainer: (FAILED, traceback) in place of an answer, then it exits
#: What a worker sees when the trainer is gone: end of file or a broken pipe on either pipe.
TRAINER_GONE = (EOFError, BrokenPipeError, ConnectionResetError, PeerDiedError)


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


# --------------------------------------------------------------------------------- worker side
class PipeChannel:
    """A spawned worker's :class:`~experiments.actor.Channel`: its data pipe, woken early by
    traffic on its weight pipe (new weights to apply).

    Answers leave on a thread of their own (the outbox), in order: a rollout larger than the
    pipe's buffer (Atari frames) blocks its sender until the trainer reads it, and a trainer busy
    waiting for this worker's acknowledgement of new weights would otherwise wait on a worker
    that waits on it. The actor loop meanwhile keeps applying (and acknowledging) weights. An
    answer that cannot be sent (the trainer is gone) raises its error at the next send or at
    :meth:`close`.
    """

    def __init__(self, data: Connection, weights: Connection) -> None:
        self.data = data
        self.weights = weights
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._sender = threading.Thread(target=self._send_queued, name="outbox", daemon=True)
        self._sender.start()

    def ready(self) -> None:
        self._post(pickle.dumps(READY))

    def next_command(self, timeout: float) -> Command | None:
        wait([self.data, self.weights], timeout=timeout)
        return Command(self.data.recv()) if self.data.poll() else None

    def send_rollout(self, rollout: Rollout) -> None:
        self._post(pickle.dumps(rollout))  # pickled here: the sender holds bytes, not tensors

    def send_report(self, version: int, digest: str) -> None:
        self._post(pickle.dumps((version, digest)))

    def send_failure(self, trace: str) -> None:
        """``(FAILED, trace)`` in place of the answer the trainer awaits (errors ignored: the
        worker is failing anyway)."""
        with contextlib.suppress(BaseException):
            self._post(pickle.dumps((FAILED, trace)))

    def close(self, timeout: float) -> None:
        """Let the queued answers leave (at most ``timeout`` s: a trainer that stopped reading
        will not take them), then stop the outbox; raises the error of an answer that failed."""
        self._outbox.put(None)
        self._sender.join(timeout)
        if self._error is not None:
            raise self._error

    def _post(self, payload: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._outbox.put(payload)

    def _send_queued(self) -> None:
        while (payload := self._outbox.get()) is not None:
            try:
                self.data.send_bytes(payload)
            except BaseException as err:  # the trainer is gone: the actor loop learns of it
                self._error = err
                return


def run_worker(
    spec: ActorSpec, worker_id: int, scheme: WeightSyncScheme, weights: Connection,
    data: Connection,
) -> None:  # fmt: skip
    """Process entry point: the actor loop until told to stop or until the trainer is gone."""
    channel = PipeChannel(data, weights)
    try:
        run_actor(spec, worker_id, scheme, channel, {"pipe": weights})
        channel.close(JOIN_TIMEOUT_S)
    except TRAINER_GONE:
        pass  # there is nobody left to work for
    except Exception:
        # Its env or policy raised: the trainer learns why, in place of the answer it awaits.
        channel.send_failure(traceback.format_exc())
        with contextlib.suppress(*TRAINER_GONE):
            channel.close(JOIN_TIMEOUT_S)
        raise
    finally:
        scheme.shutdown()
        data.close()


# -------------------------------------------------------------------------------- trainer side
class WorkerPool:
    """``num_workers`` spawned workers, each acting as ``spec`` says; ``scheme`` (not yet
    initialised) is pickled to every one of them.

    Args:
        spec: what each worker builds.
        num_workers: how many to spawn.
        scheme: the weight-sync scheme (the trainer initialises its own copy).
        startup_timeout: seconds for all workers to start (spawn, import torch, build models).
    """

    def __init__(
        self, spec: ActorSpec, num_workers: int, scheme: WeightSyncScheme, *,
        startup_timeout: float,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.num_workers = num_workers
        self.scheme = scheme
        self.startup_timeout = startup_timeout
        self._processes: list[Any] = []
        self._data: list[Connection] = []
        self._weights: list[Connection] = []

    def start(self) -> dict[str, Any]:
        """Spawn the workers and wait until each is ready; the scheme reaches them through their
        weight pipes and watches their processes (a worker that dies is named at once, with its
        exit code, not after the sync's timeout)."""
        ctx = mp.get_context("spawn")
        child_ends = []
        for w in range(self.num_workers):
            data_here, data_there = ctx.Pipe()
            weights_here, weights_there = ctx.Pipe()
            self._data.append(data_here)
            self._weights.append(weights_here)
            child_ends += [data_there, weights_there]
            self._processes.append(
                ctx.Process(
                    target=run_worker,
                    args=(self.spec, w, self.scheme, weights_there, data_there),
                    name=f"weightsync-worker-{w}",
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
        for w in range(self.num_workers):
            try:
                answer = self._answer(
                    w, self._read(w, self.startup_timeout, "start up", self._data[w].recv)
                )
            except WorkerLost as err:
                raise RunStopped(str(err)) from None
            if answer != READY:
                raise RunStopped(f"worker {w} sent something other than {READY!r} on start-up")
        return {"pipes": self._weights, "processes": self._processes}

    def send(self, worker: int, command: Command) -> None:
        try:
            self._data[worker].send(int(command))
        except (OSError, EOFError) as err:
            raise WorkerLost(worker, f"worker {worker} cannot be reached ({err})") from None

    def wait_any(self, workers: list[int], timeout: float) -> list[int]:
        pipes = {self._data[w]: w for w in workers}
        return sorted(pipes[conn] for conn in wait(list(pipes), timeout))

    def receive_rollout(self, worker: int, timeout: float) -> Rollout:
        data = self._data[worker]
        message = pickle.loads(self._read(worker, timeout, "deliver a rollout", data.recv_bytes))
        return self._answer(worker, message)

    def receive_report(self, worker: int, timeout: float) -> tuple[int, str]:
        data = self._data[worker]
        return self._answer(worker, self._read(worker, timeout, "report its weights", data.recv))

    def exit_reason(self, worker: int) -> str | None:
        if self._processes[worker].is_alive():
            return None
        return self._died(worker, "between rollouts")

    def release(self, worker: int) -> None:
        """Close the worker's data pipe and kill its process."""
        self._data[worker].close()
        self._processes[worker].kill()

    def close(self) -> None:
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

    # ------------------------------------------------------------------------------ internals
    @staticmethod
    def _answer(w: int, message: Any) -> Any:
        """``message``, unless it is worker ``w``'s ``(FAILED, traceback)``: WorkerLost with it."""
        if isinstance(message, tuple) and message[:1] == (FAILED,):
            raise WorkerLost(w, f"worker {w} failed:\n{message[1].rstrip()}")
        return message

    def _read(self, w: int, timeout: float, doing: str, read: Callable[[], Any]) -> Any:
        """What ``read`` returns from worker ``w``'s data pipe; WorkerLost if it is gone or
        silent for ``timeout`` s."""
        if not self._wait(self._data[w], timeout):
            raise WorkerLost(w, f"worker {w} did not {doing} within {timeout:g} s")
        try:
            return read()
        except (EOFError, OSError):
            raise WorkerLost(w, self._died(w, f"before it could {doing}")) from None

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
