"""Weights over a multiprocessing pipe, with acknowledgements and time-outs.

Every message is an envelope ``(kind, model_id, version, payload)``. The trainer sends
``"weights"`` and waits for ``"ack"`` (applied) or ``"error"`` (refused, with the reason).
Tensors in the payload are pickled by ``torch.multiprocessing``, so a tensor in shared
memory crosses as a handle, not as bytes; the pipe scheme uses this to send one flat staging
buffer once and tiny "apply version N" messages after that.

Every wait has a time-out, and an error names the peer, the model and the version: a dead peer
is a :class:`~weightsync.errors.PeerDiedError` at once, a silent one a
:class:`~weightsync.errors.SyncTimeoutError` after ``timeout`` seconds.

A dead peer is seen in two ways. End of file on the pipe works only once every copy of the
peer's end is closed, and a trainer that started its workers usually still holds theirs. So a
worker's end also introduces itself: before its first message it sends ``("hello", "", 0, pid)``,
and the trainer's end watches that process through a pidfd (Linux 5.3+), which becomes readable
when the process exits; every wait for the worker waits on the pipe and the pidfd together.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
import weakref
from multiprocessing.connection import Connection, wait
from typing import Any

import torch.multiprocessing  # noqa: F401  (registers the tensor reductions used by pickling)

from weightsync.errors import (
    PeerDiedError,
    SchemeMismatchError,
    SharedMemoryError,
    SyncTimeoutError,
    WeightSyncError,
    WorkerRejectedError,
)
from weightsync.flat import FlatBuffer
from weightsync.timeouts import check_timeout
from weightsync.transports.base import SetupFailed, Update
from weightsync.weights import FlatWeights

WEIGHTS, ACK, ERROR, CLOSE, HELLO = "weights", "ack", "error", "close", "hello"

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


def _is_readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class MPTransport:
    """One end of a trainer-worker pipe.

    Args:
        pipe_connection: a ``multiprocessing`` ``Connection`` (one end of ``mp.Pipe()``).
        timeout: seconds to wait for the peer's answer before raising SyncTimeoutError.
        worker_id: on the trainer side, the index of the worker at the other end (errors name
            it); None on the worker side, where the peer is the trainer.

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
        self, pipe_connection: Connection, timeout: float = 10.0, worker_id: int | None = None
    ):
        self.pipe = pipe_connection
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
                self.pipe.send((CLOSE, "", 0, None))
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
        self._introduce()  # before the first update arrives: the trainer can watch us from now on
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
        if self.closed or self._peer_exited():  # a watched worker's exit, whatever is unread
            return False
        try:
            if not self.pipe.poll(0):
                return True  # nothing to read: open and quiet
            return not self._peer_closed()
        except (OSError, EOFError):
            return False

    def _peer_exited(self) -> bool:
        """Whether the worker this end watches (see :meth:`_introduce`) has exited."""
        return self._peer_watch is not None and _is_readable(self._peer_watch)

    def _introduce(self) -> None:
        """On a worker's end, send this process's id once, before anything else."""
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
        self._introduce()
        try:
            self.pipe.send(message)
        except (OSError, EOFError, BrokenPipeError) as err:
            raise PeerDiedError(
                f"cannot reach {self.peer}: its pipe is closed (process died?) while sending "
                f"version {version} of model {model_id!r}",
                workers=self._as_workers(),
            ) from err

    def take_message(self) -> tuple[str, str, int, Any] | None:
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

    def _next_message(
        self, timeout: float, doing: str, peer: str
    ) -> tuple[str, str, int, Any] | None:
        """The peer's next message within ``timeout`` s (None if none came); a peer's
        introduction is taken in passing. PeerDiedError naming ``peer`` when it is gone."""
        deadline = time.monotonic() + timeout
        while True:
            watched = [self.pipe] if self._peer_watch is None else [self.pipe, self._peer_watch]
            try:
                if not wait(watched, max(0.0, deadline - time.monotonic())):
                    return None
                if not self.pipe.poll(0):  # only the watched process is readable: it exited
                    raise PeerDiedError(
                        f"{peer} (process {self.peer_pid}) exited before it could {doing}",
                        workers=self._as_workers(),
                    )
                message = self.pipe.recv()
            except (EOFError, OSError) as err:
                raise PeerDiedError(
                    f"{peer} closed its pipe (process died?) before it could {doing}",
                    workers=self._as_workers(),
                ) from err
            if message[0] != HELLO:
                return message
            if self.worker_id is not None:  # a worker's introduction: watch its process
                self._watch(message[3])

    def _recv(
        self, timeout: float | None, doing: str, peer: str | None = None
    ) -> tuple[str, str, int, Any]:
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


class _Staged:
    """Payload of a pipe update: which staging buffer holds it (``slot``), and that buffer
    itself the first time a worker is told of it, then nothing."""

    def __init__(self, slot: int, buffer: FlatBuffer | None):
        self.slot = slot
        self.buffer = buffer


#: The staging buffer the trainer's model may live in (:meth:`PipeBroadcast.source_buffer`).
_MODEL_SLOT = 0
#: The staging buffer for weights passed to ``send(weights=...)`` while the model lives in the
#: first one: those never overwrite the trainer's model.
_GIVEN_SLOT = 1


class PipeBroadcast:
    """Trainer side of the pipe scheme: one pipe per worker, shared staging buffers.

    An update writes the weights into a staging buffer (nothing, if the trainer's model is
    bound to it) and sends each chosen worker a few-byte "apply version N" message; every worker
    copies the staging buffer into its own model in parallel and acknowledges. Each staging
    buffer's handle crosses each pipe once. Weights passed explicitly (``send(weights=...)``) are
    staged in a second buffer when the trainer's model lives in the first, so a send never writes
    into the trainer's model. The trainer must not change its weights until the update is
    acknowledged (``finish``), which :class:`~weightsync.WeightSender` guarantees for ``send``
    and documents for ``send_async``.
    """

    carries_weights = True
    device_direct = False

    def __init__(self, pipes: list[Connection], timeout: float = 10.0):
        self.links = [MPTransport(p, timeout, worker_id=i) for i, p in enumerate(pipes)]
        self.timeout = timeout
        self.buffers: list[FlatBuffer | None] = [None, None]  # per slot (see _MODEL_SLOT)
        self._lent = False  # whether the model slot's buffer was handed out as a source
        self.acked_versions: dict[int, int | None] = dict.fromkeys(range(len(pipes)))
        self._has_staging: set[tuple[int, int]] = set()  # (worker, slot) holding the handle
        self._in_flight: tuple[str, int, list[int], int] | None = None
        self._unreachable: list[PeerDiedError] = []  # found dead while sending; raised in finish
        self.removed: set[int] = set()

    @property
    def staging(self) -> FlatBuffer | None:
        """The staging buffer the trainer's model may live in."""
        return self.buffers[_MODEL_SLOT]

    def remove_workers(self, worker_ids: list[int]) -> None:
        """Stop sending to these workers (dead or retired); the others go on."""
        for w in worker_ids:
            self.removed.add(w)
            self.acked_versions.pop(w, None)
            self.links[w].close()

    def _staging_for(self, slot: int, weights: FlatWeights) -> FlatBuffer:
        """The staging buffer of ``slot``, re-created (and re-sent to workers) if the layout
        changed. When shared memory cannot hold it, the workers are told at once (they would
        otherwise wait out their timeout) and SharedMemoryError is raised."""
        buffer = self.buffers[slot]
        if buffer is None or buffer.mismatches(weights):
            try:
                fresh = FlatBuffer.for_weights(weights, shared=True)
            except SharedMemoryError as err:
                for w in range(len(self.links)):
                    if w not in self.removed:
                        with contextlib.suppress(OSError, EOFError):
                            self.links[w].pipe.send((WEIGHTS, "", 0, SetupFailed(str(err))))
                raise
            buffer = self.buffers[slot] = fresh
            self._has_staging = {(w, s) for w, s in self._has_staging if s != slot}
            if slot == _MODEL_SLOT:
                self._lent = False
        return buffer

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer:
        """Where the trainer may keep its model: the model's staging buffer itself (then sends
        copy nothing on the trainer side; workers read it only while an update is in flight)."""
        buffer = self._staging_for(_MODEL_SLOT, weights)
        self._lent = True
        return buffer

    def retired(self, buffer: FlatBuffer) -> bool:
        """A staging buffer is retired once a newer one replaced it (see :meth:`finish`)."""
        return buffer is not self.staging

    def start(
        self,
        model_id: str,
        version: int,
        weights: FlatWeights,
        worker_ids: list[int] | None,
        *,
        source: FlatBuffer | None = None,
    ) -> None:
        """Stage ``weights`` and tell each chosen worker to apply them (``source``: the flat
        buffer the weights live in; when it is the staging buffer no tensor is copied)."""
        live = [w for w in range(len(self.links)) if w not in self.removed]
        targets = live if worker_ids is None else list(worker_ids)
        unknown = [w for w in targets if w not in live]
        if unknown:
            raise ValueError(
                f"unknown or removed worker id(s) {unknown}: the live workers are {live}"
            )
        if source is not None and source is self.staging:  # the trainer's model lives in it
            slot, staging = _MODEL_SLOT, source  # laid out when it was bound
            staging.write_extra(weights.extra)
        else:  # never into the buffer the trainer's model lives in
            slot = _GIVEN_SLOT if self._lent else _MODEL_SLOT
            staging = self._staging_for(slot, weights)
            staging.write(weights)
        sent = []
        for w in targets:
            payload = _Staged(slot, None if (w, slot) in self._has_staging else staging)
            try:
                self.links[w].send_weights_async(model_id, payload, version)
            except PeerDiedError as err:  # the others got the message: wait for them in finish
                self._unreachable.append(err)
                continue
            sent.append(w)
        self._in_flight = (model_id, version, sent, slot)

    def finish(self, timeout: float | None = None) -> None:
        """Wait for every worker of the update in flight; raise naming those that failed."""
        if self._in_flight is None:
            return
        model_id, version, targets, slot = self._in_flight
        self._in_flight = None
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        rejections: dict[int, str] = {}
        failures: list[WeightSyncError] = list(self._unreachable)
        self._unreachable = []
        for w in (w for failure in failures for w in failure.workers):
            self.acked_versions[w] = None  # not reached: it holds an older version
        for w in targets:
            try:
                self.links[w].wait_ack(max(0.0, deadline - time.monotonic()))
            except WorkerRejectedError as err:
                rejections.update(err.rejections)
                self._has_staging.add((w, slot))  # it got the handle, only refused the layout
                continue
            except (SyncTimeoutError, PeerDiedError) as err:
                self.acked_versions[w] = None  # unknown: it may hold a partial copy
                if isinstance(err, SyncTimeoutError):  # the time it had: the whole budget
                    err = SyncTimeoutError(
                        f"worker {w} did not acknowledge version {version} of model "
                        f"{model_id!r} within {budget:g} s; it may be stuck or overloaded "
                        "(raise the timeout if it is just slow)",
                        workers=[w],
                    )
                failures.append(err)
                continue
            self._has_staging.add((w, slot))
            self.acked_versions[w] = version
        if failures:
            # A worker that timed out may still copy a staging buffer later: retire them, so
            # that nothing (not the next send, not the trainer's optimizer when its model is
            # bound to one) writes into them again; the next send stages into a fresh buffer.
            # The late copy then holds exactly this version, never a mix of versions.
            self.buffers = [None, None]
            self._lent = False
            self._has_staging.clear()
            workers = [w for f in failures for w in f.workers]
            raise type(failures[0])("; ".join(str(f) for f in failures), workers=workers)
        if rejections:
            raise WorkerRejectedError(model_id, version, rejections)

    def check_connection(self) -> bool:
        return all(
            link.check_connection() for w, link in enumerate(self.links) if w not in self.removed
        )

    def close(self) -> None:
        for link in self.links:
            link.close()


class PipeReader:
    """Worker side of the pipe scheme: turns "apply version N" messages into updates."""

    carries_weights = True

    def __init__(self, pipe: Connection, timeout: float = 10.0):
        self.link = MPTransport(pipe, timeout)
        self.stagings: dict[int, FlatBuffer] = {}  # per slot, as the trainer handed them out

    @property
    def closed(self) -> bool:
        return self.link.closed

    def poll(self, timeout: float) -> Update | None:
        got = self.link.receive_weights(timeout)
        if got is None:
            return None
        model_id, payload = got
        version = self.link.last_received[1]
        if isinstance(payload, SetupFailed):
            raise SharedMemoryError(f"the trainer could not stage the weights: {payload.reason}")
        if not isinstance(payload, _Staged):
            problem = (
                f"this worker uses the pipe scheme, but the trainer sent a "
                f"{type(payload).__name__} instead of a staged update: it uses another scheme. "
                "Build both ends from the same scheme (the same sync= backend)."
            )
            self.link.send_error(problem)
            raise SchemeMismatchError(problem)
        if payload.buffer is not None:
            self.stagings[payload.slot] = payload.buffer
        return Update(model_id, version, self.stagings[payload.slot], zero_copy=False)

    def acknowledge(self, update: Update) -> None:
        self.link.send_ack()

    def reject(self, update: Update, reason: str) -> None:
        self.link.send_error(reason)

    def close(self) -> None:
        self.link.pipe.close()
