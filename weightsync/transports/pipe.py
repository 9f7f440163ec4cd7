"""The pipe scheme's transports: one pipe per worker, the weights in a shared staging buffer.

An update writes the weights into a staging buffer in shared memory (nothing, if the trainer's
model lives in it) and sends each chosen worker a few-byte "apply version N" envelope over its
control link (:class:`~weightsync.transports.link.MPTransport`); every worker copies the staging
buffer into its own model in parallel and acknowledges. Each staging buffer's handle crosses each
pipe once (tensors in shared memory are pickled as handles by ``torch.multiprocessing``).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection

from weightsync.errors import (
    PeerDiedError,
    SchemeMismatchError,
    SharedMemoryError,
    SyncTimeoutError,
    WorkerRejectedError,
)
from weightsync.flat import FlatBuffer
from weightsync.transports.base import SetupFailed, Update
from weightsync.transports.link import MPTransport
from weightsync.transports.staging import MODEL_SLOT, Staging
from weightsync.transports.workers import Failures, ProcessHandle, WorkerSet
from weightsync.weights import FlatWeights

__all__ = ["MPTransport", "PipeBroadcast", "PipeReader"]


class _Staged:
    """Payload of a pipe update: which staging buffer holds it (``slot``), and that buffer
    itself the first time a worker is told of it, then nothing."""

    def __init__(self, slot: int, buffer: FlatBuffer | None):
        self.slot = slot
        self.buffer = buffer


class PipeBroadcast:
    """Trainer side of the pipe scheme: one control link per worker, shared staging buffers
    (:class:`~weightsync.transports.staging.Staging`).

    Weights passed explicitly (``send(weights=...)``) are staged in a second buffer when the
    trainer's model lives in the first, so a send never writes into the trainer's model. The
    trainer must not change its weights until the update is acknowledged (``finish``), which
    :class:`~weightsync.WeightSender` guarantees for ``send`` and documents for ``send_async``.
    """

    carries_weights = True
    device_direct = False

    def __init__(self, pipes: list[Connection], timeout: float = 10.0):
        self.workers = WorkerSet(len(pipes))
        self.links = [
            MPTransport(p, timeout, worker_id=i, process=functools.partial(self.workers.process, i))
            for i, p in enumerate(pipes)
        ]
        self.timeout = timeout
        self.staging = Staging(shared=True)
        self.acked_versions: dict[int, int | None] = dict.fromkeys(range(len(pipes)))
        self._holders: dict[int, tuple[FlatBuffer, set[int]]] = {}  # slot: buffer, who has it
        self._in_flight: tuple[str, int, list[int], int] | None = None
        self._unreachable: list[PeerDiedError] = []  # found dead while sending; raised in finish

    def watch_processes(self, processes: Sequence[ProcessHandle] | None) -> None:
        """The workers' processes (see :meth:`WorkerSet.watch`): a worker that dies is named at
        once, with its exit code, even before its end of the pipe was built."""
        self.workers.watch(processes)

    @property
    def shared_bytes(self) -> int:
        """Bytes of shared memory the staging buffers hold."""
        return self.staging.shared_bytes

    @property
    def copies_per_send(self) -> int:
        """One copy down each live worker's pipe."""
        return len(self.workers.live)

    def remove_workers(self, worker_ids: list[int]) -> None:
        """Stop sending to these workers (dead or retired); the others go on."""
        for w in self.workers.remove(worker_ids):
            self.acked_versions.pop(w, None)
            self.links[w].close()

    def _staged(self, stage: Callable[[], tuple[int, FlatBuffer]]) -> tuple[int, FlatBuffer]:
        """Run ``stage`` (a :class:`Staging` call); when shared memory cannot hold the buffer,
        tell the workers at once (they would otherwise wait out their timeout) and raise."""
        try:
            return stage()
        except SharedMemoryError as err:
            for w in self.workers.live:
                self.links[w].tell_setup_failed("", str(err))
            raise

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer:
        """Where the trainer may keep its model: the model's staging buffer itself (then sends
        copy nothing on the trainer side; workers read it only while an update is in flight)."""
        return self._staged(lambda: (MODEL_SLOT, self.staging.source(weights)))[1]

    def retired(self, buffer: FlatBuffer) -> bool:
        """A staging buffer is retired once a newer one replaced it (see :meth:`finish`)."""
        return self.staging.retired(buffer)

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
        targets = self.workers.targets(worker_ids)
        slot, staging = self._staged(lambda: self.staging.stage(weights, source))
        buffer, holders = self._holders.get(slot, (None, set()))
        if buffer is not staging:  # a new buffer: its handle must cross every pipe again
            holders = set()
            self._holders[slot] = (staging, holders)
        sent = []
        for w in targets:
            payload = _Staged(slot, None if w in holders else staging)
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
        failures = Failures()
        for err in self._unreachable:
            failures.add_error(err)
        self._unreachable = []
        holders = self._holders[slot][1]
        for w in targets:
            try:
                self.links[w].wait_ack(max(0.0, deadline - time.monotonic()))
            except WorkerRejectedError as err:
                failures.add_refused(w, err.rejections[w])
                holders.add(w)  # it got the handle, only refused the layout
                continue
            except PeerDiedError as err:
                failures.add_error(err)
                continue
            except SyncTimeoutError:  # the time it had: the whole budget
                failures.add_silent(
                    w,
                    f"worker {w} did not acknowledge version {version} of model {model_id!r} "
                    f"within {budget:g} s; it may be stuck or overloaded (raise the timeout if it "
                    "is just slow)",
                )
                continue
            holders.add(w)
            self.acked_versions[w] = version
        for w in failures.failed:
            self.acked_versions[w] = None  # unknown: it may hold a partial copy, or an old one
        if failures.failed:
            # A worker that timed out may still copy a staging buffer later: retire them, so
            # that nothing (not the next send, not the trainer's optimizer when its model is
            # bound to one) writes into them again; the next send stages into a fresh buffer.
            # The late copy then holds exactly this version, never a mix of versions.
            self.staging.retire()
            self._holders.clear()
        failures.raise_any(model_id, version)

    def check_connection(self) -> bool:
        return all(self.links[w].check_connection() for w in self.workers.live)

    def close(self) -> None:
        for link in self.links:
            link.close()


class PipeReader:
    """Worker side of the pipe scheme: turns "apply version N" messages into updates."""

    carries_weights = True

    def __init__(self, pipe: Connection, timeout: float = 10.0):
        self.link = MPTransport(pipe, timeout)
        self.link.introduce()  # the trainer watches this process from now on
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
