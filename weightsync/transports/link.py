"""One end of a trainer-worker pipe: envelopes, acknowledgements, time-outs, a peer's death.

This is the control link every pipe-based transport is made of (the pipe scheme sends its updates
over it, shared-mem hands out its buffers and hears refusals on it), and the message-level
transport of TorchRL's older API (:class:`MPTransport`).

Every message is an envelope ``(kind, model_id, version, payload)``. The trainer sends
``"weights"`` and waits for ``"ack"`` (applied) or ``"error"`` (refused, with the reason).
Tensors in the payload are pickled by ``torch.multiprocessing``, so a tensor in shared
memory crosses as a handle, not as bytes.

Every wait has a time-out, and an error names the peer, the model and the version: a dead peer
is a :class:`~weightsync.errors.PeerDiedError` at once, a silent one a
:class:`~weightsync.errors.SyncTimeoutError` after ``timeout`` seconds.

A dead peer is seen in three ways. End of file on the pipe works only once every copy of the
peer's end is closed, and a trainer that started its workers usually still holds theirs. So a
worker's end introduces itself as soon as it is built: it sends ``("hello", "", 0, pid)``, and
the trainer's end watches that process through a pidfd (Linux 5.3+), which becomes readable when
the process exits. And where the trainer knows its workers' processes (``process=``, see
:class:`~weightsync.transports.workers.WorkerSet`), it watches each one's sentinel from the
start, so a worker that dies before it ever built its end is named too, with its exit code.
Every wait for the worker waits on the pipe and on these together.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

import torch.multiprocessing  # noqa: F401  (registers the tensor reductions used by pickling)

from weightsync.errors import (
    PeerDiedError,
    SyncTimeoutError,
    WorkerRejectedError,
)
from weightsync.timeouts import check_timeout
from weightsync.transports.base import SetupFailed
from weightsync.transports.workers import ProcessHandle, describe_exit, is_readable

#: The kinds of envelope: trainer -> worker ``weights`` and ``close``; worker -> trainer ``ack``,
#: ``error`` (a refusal, with its reason) and ``hello`` (its process id, once).
WEIGHTS, ACK, ERROR, CLOSE, HELLO = "weights", "ack", "error", "close", "hello"
#: An envelope: ``(kind, model_id, version, payload)``.
Envelope = tuple[str, str, int, Any]
#: What a trainer sends when no more updates will come.
CLOSE_ENVELOPE: Envelope = (CLOSE, "", 0, None)

#: Per worker-side pipe, the ``(model_id, version)`` received on it and not answered yet. It
#: belongs to the pipe, not to one ``MPTransport`` over it: a legacy worker may read with one
#: and acknowledge (``WeightReceiver.apply_weights``) through another.
_unanswered: weakref.WeakKeyDictionary[Connection, tuple[str, int]] = weakref.WeakKeyDictionary()


def _watch_process(pid: int) -> int | None:
    """A pidfd of process ``pid`` (readable once it has exited), or None where the system
    offers none or the process is already gone."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class MPTransport:
    """One end of a trainer-worker pipe.

    Args:
        pipe_connection: a ``multiprocessing`` ``Connection`` (one end of ``mp.Pipe()``).
        timeout: seconds to wait for the peer's answer before raising SyncTimeoutError.
        worker_id: on the trainer side, the index of the worker at the other end (errors name
            it); None on the worker side, where the peer is the trainer.
        process: on the trainer side, how to find the worker's process (a call returning its
            :class:`~weightsync.transports.workers.ProcessHandle`, or None while unknown): every
            wait also ends when it exits, and the error says how it ended.

    Example (one process, both ends):
        >>> import torch.multiprocessing as mp
        >>> trainer_end, worker_end = mp.Pipe()
        >>> trainer, worker = MPTransport(trainer_end, worker_id=0), MPTransport(worker_end)
        >>> trainer.send_weights_async("policy", {"w": 1})
        >>> worker.receive_weights(timeout=1.0)
        ('policy', {'w': 1})
        >>> worker.send_ack()
        >>> trainer.wait_ack()
    """

    def __init__(
        self,
        pipe_connection: Connection,
        timeout: float = 10.0,
        worker_id: int | None = None,
        *,
        process: Callable[[], ProcessHandle | None] | None = None,
    ):
        self.pipe = pipe_connection
        self._process = process
        self._exit: str | None = None  # how the watched worker ended, once known
        self.timeout = check_timeout(timeout)
        self.worker_id = worker_id
        self.peer = "the trainer" if worker_id is None else f"worker {worker_id}"
        # Who answers an acknowledgement: a trainer-side end built the legacy way (no
        # ``worker_id``) still waits on a worker, and its errors must say so.
        self._acker = "the worker" if worker_id is None else self.peer
        self.closed = False
        self.peer_pid: int | None = None  # the worker's process, once it introduced itself
        self._peer_watch: int | None = None  # a pidfd of it, readable once it has exited
        self._introduced = False  # whether this (worker's) end has sent its pid
        self._next_version = 0
        self._awaiting: tuple[str, int] | None = None  # (model_id, version) sent, not yet acked
        self.last_received: tuple[str, int] | None = None  # (model_id, version) on the worker

    def __repr__(self) -> str:
        return f"{type(self).__name__}(peer={self.peer!r}, timeout={self.timeout})"

    # ----------------------------------------------------------------------------- trainer side
    def send_weights(self, model_id: str, weights: Any) -> None:
        """Send ``weights`` and block until the worker acknowledges them."""
        self.send_weights_async(model_id, weights)
        self.wait_ack()

    def send_weights_async(self, model_id: str, weights: Any, version: int | None = None) -> None:
        """Send ``weights`` without waiting; pair with :meth:`wait_ack`."""
        if self._awaiting is not None:
            raise RuntimeError(
                f"{self.peer} has not acknowledged version {self._awaiting[1]} of model "
                f"{self._awaiting[0]!r} yet; call wait_ack() before sending again"
            )
        if version is None:
            version = self._next_version = self._next_version + 1
        self._send((WEIGHTS, model_id, version, weights), model_id, version)
        self._awaiting = (model_id, version)

    def wait_ack(self, timeout: float | None = None) -> None:
        """Block until the pending send is acknowledged.

        Raises SyncTimeoutError, PeerDiedError, or WorkerRejectedError when the worker refused the
        weights (its reason attached; it keeps its previous weights).
        """
        if self._awaiting is None:
            raise RuntimeError("wait_ack() called with no send pending")
        if timeout is not None:
            check_timeout(timeout, allow_zero=True)  # 0: only what has already arrived
        model_id, version = self._awaiting
        try:
            while True:
                kind, got_model, got_version, payload = self._recv(
                    timeout, f"acknowledge version {version} of model {model_id!r}", self._acker
                )
                if (got_model, got_version) != (model_id, version):
                    continue  # a late answer to an update that already timed out
                if kind == ERROR:
                    raise WorkerRejectedError(model_id, version, {self.worker_id or 0: payload})
                return
        finally:
            self._awaiting = None

    def check_ack(self, message: str = "updated") -> None:
        """Legacy: wait for an acknowledgement carrying ``message``."""
        kind, model_id, version, payload = self._recv(
            None, f"acknowledge with {message!r}", self._acker
        )
        self._awaiting = None  # answered: the next send may go
        if kind != ACK or payload != message:
            raise RuntimeError(
                f"expected acknowledgement {message!r} from {self._acker}, got {kind} {payload!r} "
                f"for version {version} of model {model_id!r}"
            )

    def close(self) -> None:
        """Tell the peer no more weights will come, then close this end."""
        if not self.closed:
            with contextlib.suppress(OSError, EOFError):  # the peer may be gone already
                self.pipe.send(CLOSE_ENVELOPE)
            self.pipe.close()
            self.closed = True
        self._unwatch()

    # ------------------------------------------------------------------------------ worker side
    def receive_weights(self, timeout: float = 1.0) -> tuple[str, Any] | None:
        """Return ``(model_id, weights)`` if a message arrives within ``timeout`` s, else None.

        Returns None (and sets ``closed``) when the trainer closed the connection cleanly;
        raises PeerDiedError if the trainer vanished without closing.
        """
        timeout = check_timeout(timeout, allow_zero=True)
        if self.closed:
            return None
        self.introduce()  # (if not yet) before the first update: the trainer watches us from now on
        message = self._next_message(timeout, "send weights", self.peer)
        if message is None:
            return None
        kind, model_id, version, payload = message
        if kind == CLOSE:
            self.closed = True
            return None
        self.last_received = _unanswered[self.pipe] = (model_id, version)
        return model_id, payload

    def send_ack(self, message: str = "updated") -> None:
        """Acknowledge the last received weights."""
        self._answer(ACK, message)

    def acknowledge_pending(self, message: str = "updated") -> bool:
        """Acknowledge the last weights received on this pipe (by any ``MPTransport`` over it)
        unless already answered; True if it did. A worker written to the legacy API applies
        what ``receive_weights`` returned with ``WeightReceiver.apply_weights``, which answers
        through this."""
        if self.pipe not in _unanswered:
            return False
        self.send_ack(message)
        return True

    def send_error(self, reason: str) -> None:
        """Refuse the last received weights, telling the trainer why."""
        self._answer(ERROR, reason)

    def _answer(self, kind: str, payload: str) -> None:
        pending = _unanswered.pop(self.pipe, None)
        model_id, version = self.last_received or pending or ("", 0)
        try:
            self._send((kind, model_id, version, payload), model_id, version)
        except PeerDiedError:
            # A trainer that shut down cleanly while this answer was due left a CLOSE behind
            # it: that is the end of the connection, not a failure.
            if not self._trainer_said_close():
                raise
            self.closed = True

    def _trainer_said_close(self) -> bool:
        """Drain what the trainer left in the pipe; True if it ends with a clean CLOSE."""
        try:
            while self.pipe.poll(0):
                if self.pipe.recv()[0] == CLOSE:
                    return True
        except (EOFError, OSError):
            pass
        return False

    # ------------------------------------------------------------------------------------ both
    def check_connection(self) -> bool:
        """True while the peer's end is open; end of file on the pipe means it is gone."""
        if self.closed or self.peer_exit() is not None:  # an exit, whatever is left unread
            return False
        try:
            if not self.pipe.poll(0):
                return True  # nothing to read: open and quiet
            return not self._peer_closed()
        except (OSError, EOFError):
            return False

    def peer_exit(self) -> str | None:
        """How the worker at the other end ended (``"process 42 exited with code 1"``), if this
        end watches it and it has; None otherwise. Found once, then remembered (what the
        process reported before it ended can be read only once)."""
        if self._exit is None:
            handle = None if self._process is None else self._process()
            if handle is not None:
                self._exit = describe_exit(handle)
            if (
                self._exit is None
                and self._peer_watch is not None
                and is_readable(self._peer_watch)
            ):
                self._exit = f"process {self.peer_pid} exited"
        return self._exit

    def waitables(self) -> list[Any]:
        """What a wait for this peer waits on: the pipe, and what becomes readable when the
        worker's process exits (its pidfd, its process sentinel)."""
        watched: list[Any] = [self.pipe]
        if self._peer_watch is not None:
            watched.append(self._peer_watch)
        handle = None if self._process is None else self._process()
        if handle is not None:
            watched.append(handle.sentinel)
        return watched

    def tell_setup_failed(self, model_id: str, reason: str) -> None:
        """Tell the worker that the trainer could not set the model up (it raises at once with
        ``reason`` instead of waiting out its timeout); a gone worker is no matter."""
        with contextlib.suppress(OSError, EOFError):
            self.pipe.send((WEIGHTS, model_id, 0, SetupFailed(reason)))

    def introduce(self) -> None:
        """On a worker's end, send this process's id once, before anything else (worker-side
        transports call it as soon as they are built: from then on a trainer watches the
        process)."""
        if self.worker_id is None and not self._introduced:
            self._introduced = True
            with contextlib.suppress(OSError, EOFError):  # a dead trainer is found by the caller
                self.pipe.send((HELLO, "", 0, os.getpid()))

    def _watch(self, pid: int) -> None:
        """Watch the worker that introduced itself as ``pid``."""
        self._unwatch()
        self.peer_pid, self._peer_watch = pid, _watch_process(pid)
        if self._peer_watch is not None:
            self._finalizer = weakref.finalize(self, os.close, self._peer_watch)

    def _unwatch(self) -> None:
        if self._peer_watch is not None:
            self._finalizer()  # closes the pidfd, once
            self._peer_watch = None

    def _peer_closed(self) -> bool:
        """Peek (without consuming a message) whether the readable pipe is at end of file."""
        try:
            sock = socket.socket(fileno=self.pipe.fileno())
        except OSError:
            return False  # a one-way os.pipe: cannot peek; a pending message means it is alive
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except OSError:
            return False
        finally:
            sock.detach()

    def _send(self, message: tuple, model_id: str, version: int) -> None:
        self.introduce()
        try:
            self.pipe.send(message)
        except (OSError, EOFError, BrokenPipeError) as err:
            raise PeerDiedError(
                f"cannot reach {self.peer}: its pipe is closed (process died?) while sending "
                f"version {version} of model {model_id!r}",
                workers=self._as_workers(),
            ) from err

    def take_message(self) -> Envelope | None:
        """The peer's next message if one has already arrived, else None; a worker's
        introduction is taken in passing (its process is watched from then on). Raises
        EOFError or OSError when the pipe is closed, like ``Connection.recv``."""
        while self.pipe.poll(0):
            message = self.pipe.recv()
            if message[0] != HELLO:
                return message
            if self.worker_id is not None:
                self._watch(message[3])
        return None

    def _next_message(self, timeout: float, doing: str, peer: str) -> Envelope | None:
        """The peer's next message within ``timeout`` s (None if none came); a peer's
        introduction is taken in passing. PeerDiedError naming ``peer`` when it is gone."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not wait(self.waitables(), max(0.0, deadline - time.monotonic())):
                    return None
                # Nothing to read: only the watched process is readable, it exited.
                message = self.pipe.recv() if self.pipe.poll(0) else None
            except (EOFError, OSError) as err:
                how = self.peer_exit()
                raise PeerDiedError(
                    f"{peer} closed its pipe (process died?) before it could {doing}"
                    + (f": {how}" if how else ""),
                    workers=self._as_workers(),
                ) from err
            if message is None:
                raise PeerDiedError(
                    f"{peer} died before it could {doing}: {self.peer_exit() or 'it exited'}",
                    workers=self._as_workers(),
                )
            if message[0] != HELLO:
                return message
            if self.worker_id is not None:  # a worker's introduction: watch its process
                self._watch(message[3])

    def _recv(self, timeout: float | None, doing: str, peer: str | None = None) -> Envelope:
        timeout = self.timeout if timeout is None else timeout
        peer = self.peer if peer is None else peer
        message = self._next_message(timeout, doing, peer)
        if message is None:
            raise SyncTimeoutError(
                f"{peer} did not {doing} within {timeout:g} s; it may be stuck or "
                "overloaded (raise the timeout if it is just slow)",
                workers=self._as_workers(),
            )
        return message

    def _as_workers(self) -> list[int]:
        return [] if self.worker_id is None else [self.worker_id]
