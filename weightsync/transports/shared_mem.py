"""Weights published as immutable snapshots in shared memory.

The trainer never shares its live parameters (an optimizer step must not reach workers unasked).
Instead each model gets a :class:`SnapshotRing`: a few flat buffers in shared memory plus a small
shared control block. A send copies the weights into a buffer no worker is reading (one memcpy,
which may overlap the trainer's next forward/backward), then publishes it with one 8-byte store
of ``(version, buffer index)``. A worker adopts the newest snapshot by pointing its parameters at
it (no copy at all) and records in its own control slot which snapshot it holds, so the trainer
never writes into a buffer in use: a worker sees version N complete or keeps N-1, never a mix.
A worker maps the snapshots read-only, so it cannot change what the other workers read.

The buffers' handles cross the worker's pipe once, at registration. Memory is shared with torch's
file-descriptor strategy, which leaves no named ``/dev/shm`` entry behind even after ``kill -9``.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import functools
import mmap
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection, wait
from typing import Any

import torch

from weightsync.errors import (
    PeerDiedError,
    SchemeMismatchError,
    SharedMemoryError,
    SyncTimeoutError,
    WeightMismatchError,
    WeightSyncError,
    WorkerRejectedError,
)
from weightsync.flat import FlatBuffer, FlatLayout, copy_bytes
from weightsync.shm import check_room
from weightsync.transports.base import SetupFailed, Update
from weightsync.transports.link import ERROR, WEIGHTS, MPTransport
from weightsync.transports.staging import buffer_bytes
from weightsync.transports.workers import Failures, ProcessHandle, WorkerSet
from weightsync.weights import FlatWeights, flatten_weights

_INDEX_BITS = 6  # up to 64 buffers per ring
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_NONE = -1


def _word(version: int, index: int) -> int:
    return (version << _INDEX_BITS) | index


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PROT_READ = 1
_created_here: set[int] = set()  # addresses of the snapshot buffers this process created


def _make_read_only(buffer: FlatBuffer) -> None:
    """Map a snapshot read-only in this (worker) process, so that a worker writing into the
    parameters it adopted (``p.add_()``, an optimizer step) cannot change what the other workers
    read: the write stops the worker with SIGSEGV (faulthandler prints where) instead of
    silently reaching every worker. Skipped for the trainer's own buffers (a worker in the
    trainer's process shares its mapping) and where the platform offers no ``mprotect``."""
    address, nbytes = buffer.data.data_ptr(), buffer.data.numel()
    if _LIBC is None or address in _created_here or address % mmap.PAGESIZE or not nbytes:
        return
    _LIBC.mprotect(ctypes.c_void_p(address), ctypes.c_size_t(nbytes), _PROT_READ)
    with contextlib.suppress(Exception):  # no usable stderr: the worker still stops
        faulthandler.enable()


class SnapshotRing:
    """A model's shared snapshot buffers and their publication state.

    ``control[0]`` holds the published ``(version, index)`` word. Each reader ``r`` has two hazard
    slots: ``control[1 + r]``, the snapshot it holds (its model may point into it), and
    ``control[1 + num_readers + r]``, the snapshot it is taking (validating, adopting). A reader
    fills the second slot before it looks at a new snapshot and moves it to the first only once
    adopted, so the snapshot it holds is never released while it decides: a refused update
    leaves both the held buffer and the held word untouched. Every slot is a single aligned
    int64 store, so no one ever sees one half-written.
    """

    def __init__(self, buffers: list[FlatBuffer], control: torch.Tensor):
        self.buffers = buffers
        self.control = control
        self._fence = threading.Lock()

    @classmethod
    def create(
        cls, weights: FlatWeights, *, num_readers: int, num_buffers: int, model_id: str = ""
    ) -> SnapshotRing:
        """The buffers of ``model_id``, or SharedMemoryError (nothing created) when they cannot
        all fit in ``/dev/shm``."""
        if not 2 <= num_buffers <= _INDEX_MASK + 1:
            raise ValueError(f"num_buffers must be in [2, {_INDEX_MASK + 1}], got {num_buffers}")
        layout = FlatLayout.for_weights(weights)
        check_room(
            num_buffers * layout.total_bytes,
            f"model {model_id!r} with {num_buffers} snapshot buffers of {layout.total_bytes} bytes",
        )
        extra_keys = list(weights.extra)
        buffers = [FlatBuffer(layout, extra_keys=extra_keys) for _ in range(num_buffers)]
        _created_here.update(buffer.data.data_ptr() for buffer in buffers)
        control = torch.full((1 + 2 * num_readers,), _NONE, dtype=torch.int64).share_memory_()
        return cls(buffers, control)

    def __reduce__(self):
        return (SnapshotRing, (self.buffers, self.control))

    @property
    def num_readers(self) -> int:
        return (self.control.numel() - 1) // 2

    @property
    def published_version(self) -> int:
        word = int(self.control[0])
        return _NONE if word == _NONE else word >> _INDEX_BITS

    def reader_versions(self) -> list[int | None]:
        """The version each reader holds (None: has adopted none yet)."""
        held = self.control[1 : 1 + self.num_readers].tolist()
        return [None if w == _NONE else w >> _INDEX_BITS for w in held]

    # ------------------------------------------------------------------------------ trainer side
    def free_index(self, *, exclude: int | None = None) -> int | None:
        """A buffer that is neither published nor held nor being taken by any reader, or None."""
        words = self.control.tolist()
        busy = {w & _INDEX_MASK for w in words if w != _NONE}
        if exclude is not None:
            busy.add(exclude)
        return next((i for i in range(len(self.buffers)) if i not in busy), None)

    def publish(self, index: int, version: int) -> None:
        self.control[0] = _word(version, index)

    def release_reader(self, reader: int) -> None:
        """Forget what a reader held or was taking (it is dead or gone), so its buffers can be
        reused."""
        self.control[1 + self.num_readers + reader] = _NONE
        self.control[1 + reader] = _NONE

    # ------------------------------------------------------------------------------- worker side
    def acquire(self, reader: int, newer_than: int) -> tuple[int, int] | None:
        """Take the published snapshot if it is newer than ``newer_than``: ``(version, index)``.

        Hazard-pointer protocol: record the word in our taking slot, then re-read the published
        word. If it is unchanged, the trainer (which picks buffers only after publishing) will see
        our slot before it reuses that buffer. The held slot is not touched: what the reader holds
        stays protected until :meth:`adopt` (or forever, if the update is refused).
        """
        slot = 1 + self.num_readers + reader
        for _ in range(1000):
            word = int(self.control[0])
            if word == _NONE or word >> _INDEX_BITS <= newer_than:
                break
            self.control[slot] = word
            with self._fence:  # a full memory barrier between our store and the next load
                pass
            if int(self.control[0]) == word:
                return word >> _INDEX_BITS, word & _INDEX_MASK
        self.control[slot] = _NONE
        return None

    def adopt(self, reader: int) -> None:
        """The snapshot being taken is now held (the reader's model points into it); the one
        held before is released. The new word is stored before the taking slot is cleared, so
        the new snapshot is protected throughout."""
        taking = 1 + self.num_readers + reader
        self.control[1 + reader] = int(self.control[taking])
        self.control[taking] = _NONE

    def drop(self, reader: int) -> None:
        """Give up the snapshot being taken (refused); what the reader holds stays held."""
        self.control[1 + self.num_readers + reader] = _NONE


class _Registration:
    """What a worker receives over its pipe once per model: the ring and its reader index."""

    def __init__(self, ring: SnapshotRing, reader: int):
        self.ring = ring
        self.reader = reader


class SharedMemTransport:
    """Trainer side of the shared-memory transport: publishes snapshots to all workers.

    Args:
        policy_weights: optional ``{model_id: weights}`` registered on the first send.
        auto_register: create a model's shared buffers on its first send when it was not
            registered with :meth:`register_weights`.
        num_buffers: snapshot buffers per model; default ``num_workers + 2``, which guarantees a
            free buffer even if every worker holds a different old snapshot. Fewer saves memory
            but a send may then wait for a lagging worker (up to ``timeout``).
        timeout: seconds to wait for workers during registration, or for a free buffer.
    """

    carries_weights = True
    device_direct = False

    def __init__(
        self,
        policy_weights: dict[str, Any] | None = None,
        auto_register: bool = True,
        *,
        num_buffers: int | None = None,
        timeout: float = 10.0,
    ):
        self.auto_register = auto_register
        self.num_buffers = num_buffers
        self.timeout = timeout
        self.workers = WorkerSet()
        self.links: list[MPTransport] = []  # per worker id
        self.rings: dict[str, SnapshotRing] = {}
        self._registered: dict[str, set[int]] = {}  # per model: workers that adopted its ring
        self._offered: dict[str, set[int]] = {}  # per model: handed its ring, no answer read yet
        self._initial = dict(policy_weights or {})
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._fitting_source: dict[str, FlatBuffer] = {}  # per model: a source checked to fit
        self._failure: WeightSyncError | None = None  # raised once the snapshot is published

    def watch_processes(self, processes: Sequence[ProcessHandle] | None) -> None:
        """The workers' processes (see :meth:`WorkerSet.watch`): a worker that dies is named at
        once, with its exit code, even before its end of the pipe was built."""
        self.workers.watch(processes)

    @property
    def shared_bytes(self) -> int:
        """Bytes of shared memory the snapshot buffers hold."""
        return sum(buffer_bytes(b) for ring in self.rings.values() for b in ring.buffers)

    #: One snapshot written per send, which every worker adopts without a copy.
    copies_per_send = 1

    def remove_workers(self, worker_ids: list[int]) -> None:
        """Stop serving these workers (dead or retired): free what they held, close their pipes."""
        for w in self.workers.remove(worker_ids):
            for ring in self.rings.values():
                ring.release_reader(w)
            self.links[w].close()

    def _live_links(self) -> list[MPTransport]:
        return [self.links[w] for w in self.workers.live]

    def register_pipe(self, pipe: Connection) -> None:
        """Add a worker; its index is the order of registration."""
        w = self.workers.add()
        lookup = functools.partial(self.workers.process, w)
        self.links.append(MPTransport(pipe, self.timeout, worker_id=w, process=lookup))

    def register_weights(self, model_id: str, weights: Any, *, version: int = 0) -> None:
        """Create ``model_id``'s shared buffers, publish ``weights`` as ``version`` and hand the
        buffers to every registered worker (blocking until each has validated and adopted them,
        up to ``timeout``; a worker that did not answer in time is waited for again by the next
        send)."""
        self._create_ring(model_id, weights, version)
        failure = self._hand_out(model_id, version)
        if failure is not None:
            raise failure

    def _create_ring(self, model_id: str, weights: Any, version: int) -> None:
        if model_id in self.rings:
            raise RuntimeError(f"model {model_id!r} is already registered with this transport")
        flat = flatten_weights(weights)
        try:
            ring = SnapshotRing.create(
                flat,
                num_readers=len(self.links),
                num_buffers=len(self.links) + 2 if self.num_buffers is None else self.num_buffers,
                model_id=model_id,
            )
        except SharedMemoryError as err:  # tell the workers now, or they wait out their timeout
            for link in self._live_links():
                link.tell_setup_failed(model_id, str(err))
            raise
        ring.buffers[0].write(flat)
        ring.publish(0, version)
        self.rings[model_id] = ring
        self._registered[model_id] = set()
        self._offered[model_id] = set()

    @property
    def acked_versions(self) -> dict[int, int | None]:
        """Per live worker, the version of the first model it holds (None: nothing yet)."""
        live = [link.worker_id for link in self._live_links()]
        if not self.rings:
            return dict.fromkeys(live)
        held = next(iter(self.rings.values())).reader_versions()
        return {w: held[w] for w in live}

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer:
        """A private flat buffer the trainer may keep its model in, so that each snapshot is
        one block copy instead of one copy per tensor."""
        return FlatBuffer.for_weights(weights, shared=False)

    def retired(self, buffer: FlatBuffer) -> bool:
        """The trainer's private source buffer is never read by workers: never retired."""
        return False

    def send_weights(self, model_id: str, weights: Any) -> None:
        """Publish ``weights`` as the next version (blocking until the snapshot is written)."""
        ring = self.rings.get(model_id)
        version = 1 if ring is None else ring.published_version + 1
        self.start(model_id, version, flatten_weights(weights))
        self.finish()

    def start(
        self,
        model_id: str,
        version: int,
        weights: FlatWeights,
        worker_ids: list[int] | None = None,
        *,
        source: FlatBuffer | None = None,
    ) -> None:
        """Begin publishing: pick a free buffer now, copy and publish in the background.

        ``source``, when given, is a flat buffer the weights already live in (a bound trainer
        model): the snapshot is then one block copy.
        """
        if worker_ids is not None and sorted(worker_ids) != [
            link.worker_id for link in self._live_links()
        ]:
            raise ValueError(
                "shared-mem publishes one snapshot that every worker reads; worker_ids cannot "
                f"select a subset (got {worker_ids}). Use the pipe scheme to update chosen workers."
            )
        self._raise_for_dead_workers(model_id, version)
        created_with_this_version = False
        if model_id not in self.rings:
            weights_0 = self._initial.pop(model_id, None)
            if not self.auto_register and weights_0 is None:
                raise RuntimeError(
                    f"model {model_id!r} is not registered; call register_weights() first or "
                    "build the transport with auto_register=True"
                )
            if weights_0 is None:  # registered with the weights of this send: its version
                self._create_ring(model_id, weights, version)
                created_with_this_version = True
            else:
                self._create_ring(model_id, weights_0, 0)
        # Workers that refused the buffers, or did not answer in time, are named once the
        # snapshot is published: the others still update.
        failure = self._hand_out(model_id, version)
        ring = self.rings[model_id]
        if source is not None and not self._fits_ring(model_id, ring, source, weights):
            source = None  # not laid out like the snapshots: copy tensor by tensor
        buffer_problems = [] if source is not None else ring.buffers[0].mismatches(weights)
        if buffer_problems:
            raise WeightMismatchError(
                model_id, ["(vs. the registered model) " + p for p in buffer_problems]
            )
        # A ring created with this send's weights already holds them, published: a second copy
        # would take a buffer that no worker ever reads (and, with num_buffers=2, the last one).
        if not created_with_this_version:
            index = self._wait_for_free_buffer(model_id, ring, version)
            # The extra state is written here, not in the background: a state that outgrew its
            # room is refused before the send is under way (and before it spends a version).
            ring.buffers[index].write_extra(weights.extra)
            self._executor = self._executor or ThreadPoolExecutor(
                1, thread_name_prefix="weightsync"
            )
            self._pending = self._executor.submit(
                self._write_and_publish, ring, index, version, weights, source
            )
        refused_version, refused = self._take_refusals(model_id)  # of versions published before
        if isinstance(failure, WorkerRejectedError):  # the buffers, now: one error for both
            failure = WorkerRejectedError(model_id, version, refused | failure.rejections)
        elif failure is None and refused:
            failure = WorkerRejectedError(model_id, refused_version, refused)
        self._failure = failure

    def finish(self, timeout: float | None = None) -> None:
        """Block until the snapshot started by :meth:`start` is published (none is pending when
        the send created the ring); then raise what :meth:`start` found about the workers."""
        pending, self._pending = self._pending, None
        if pending is not None:
            timeout = self.timeout if timeout is None else timeout
            try:
                pending.result(timeout)
            except TimeoutError as err:
                raise SyncTimeoutError(
                    f"writing a shared-memory snapshot did not finish within {timeout:g} s"
                ) from err
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    @staticmethod
    def _write_and_publish(
        ring: SnapshotRing,
        index: int,
        version: int,
        weights: FlatWeights,
        source: FlatBuffer | None,
    ) -> None:
        target = ring.buffers[index]  # its extra state was written by start()
        if source is not None:  # laid out like the target (checked in start): one block copy
            copy_bytes(target.tensor_region, source.tensor_region)
        else:
            target.write_tensors(weights)
        ring.publish(index, version)

    def _fits_ring(
        self, model_id: str, ring: SnapshotRing, source: FlatBuffer, weights: FlatWeights
    ) -> bool:
        """Whether ``source`` (the weights' own flat buffer) has the snapshots' layout; the
        comparison of every slot is made once per source buffer (layouts are immutable)."""
        registered = ring.buffers[0]
        if weights.extra.keys() != set(registered.extra_keys):
            return False
        if self._fitting_source.get(model_id) is source:
            return True
        if source.layout.slots != registered.layout.slots:
            return False
        self._fitting_source[model_id] = source
        return True

    def _wait_for_free_buffer(self, model_id: str, ring: SnapshotRing, version: int) -> int:
        deadline = time.monotonic() + self.timeout
        while (index := ring.free_index()) is None:
            if time.monotonic() > deadline:
                raise SyncTimeoutError(
                    f"no free snapshot buffer for version {version} of model {model_id!r} within "
                    f"{self.timeout:g} s: workers hold versions {ring.reader_versions()} and have "
                    "not picked up newer ones. Call receive() more often in the workers, or "
                    "build the scheme with more buffers (num_buffers=num_workers + 2)."
                )
            time.sleep(0.0005)
        return index

    def _hand_out(self, model_id: str, version: int) -> WeightSyncError | None:
        """Hand the model's ring to every live worker that lacks it (once: a worker that has not
        answered yet is not sent it again) and wait, up to ``timeout`` in all, for the answers of
        every worker handed it and not yet heard from. Returns the error naming those that died
        meanwhile (PeerDiedError, at once), did not answer in time (SyncTimeoutError) or refused
        it (WorkerRejectedError), if any; the silent and the refusing ones are waited for, or
        handed the ring again, by the next send."""
        ring = self.rings[model_id]
        registered, offered = self._registered[model_id], self._offered[model_id]
        live = {link.worker_id: link for link in self._live_links()}
        offered &= live.keys()
        newcomers = [w for w in live if w not in registered and w not in offered]
        if any(w >= ring.num_readers for w in newcomers):
            raise RuntimeError(
                f"a worker pipe was registered after model {model_id!r}'s shared buffers were "
                "created; register every pipe before the first send"
            )
        published = max(ring.published_version, 0)
        for w in newcomers:
            with contextlib.suppress(OSError, EOFError):  # gone: the next liveness check says so
                live[w].pipe.send((WEIGHTS, model_id, published, _Registration(ring, w)))
                offered.add(w)
        failures = Failures()
        doing = f"took the shared buffers of model {model_id!r}"
        deadline = time.monotonic() + self.timeout
        while offered and (remaining := deadline - time.monotonic()) > 0:
            owners = {x: w for w in offered for x in live[w].waitables()}
            for w in dict.fromkeys(owners[x] for x in wait(list(owners), remaining)):
                link = live[w]
                try:
                    message = link.take_message()
                except (EOFError, OSError):
                    how = link.peer_exit()
                    offered.discard(w)
                    failures.add_dead(
                        w,
                        f"worker {w} closed its pipe (process died?) before it {doing}"
                        + (f": {how}" if how else ""),
                    )
                    continue
                if message is None:  # its introduction (watched now), or its process ended
                    if (how := link.peer_exit()) is not None:
                        offered.discard(w)
                        failures.add_dead(w, f"worker {w} died before it {doing}: {how}")
                    continue
                kind, got_model, _, payload = message
                if got_model != model_id:
                    continue
                offered.discard(w)
                if kind == ERROR:
                    failures.add_refused(w, payload)
                else:
                    registered.add(w)
        for w in offered:
            failures.add_silent(
                w,
                f"worker(s) {sorted(offered)} did not take the shared buffers of model "
                f"{model_id!r} within {self.timeout:g} s; they may be slow to start (raise the "
                "timeout) or stuck. The other workers were updated; the next send waits for "
                "these again.",
            )
        return failures.error(model_id, version)

    def _take_refusals(self, model_id: str) -> tuple[int, dict[int, str]]:
        """The refusals registered workers sent over their pipes since the last send (a worker
        tells each version it refuses once): the newest version refused, and each worker's
        reason. Nothing blocks; a worker found gone is left to the next liveness check."""
        newest, refusals = _NONE, {}
        registered = self._registered.get(model_id, set())
        for link in self._live_links():
            if link.worker_id not in registered:
                continue
            with contextlib.suppress(EOFError, OSError):
                while (message := link.take_message()) is not None:
                    kind, got_model, version, reason = message
                    if kind == ERROR and got_model == model_id:
                        newest = max(newest, version)
                        refusals[link.worker_id] = f"(version {version}) {reason}"
        return newest, refusals

    def _raise_for_dead_workers(self, model_id: str, version: int) -> None:
        dead = {
            link.worker_id: link.peer_exit() or "its pipe is closed"
            for link in self._live_links()
            if not link.check_connection()
        }
        if dead:
            for ring in self.rings.values():
                for worker in dead:
                    ring.release_reader(worker)
            gone = "; ".join(f"worker {w} ({how})" for w, how in dead.items())
            raise PeerDiedError(
                f"gone before version {version} of model {model_id!r} was published: {gone}; "
                "restart them, or call sender.remove_workers() to go on without them",
                workers=sorted(dead),
            )

    def receive_weights(self, timeout: float = 1.0) -> None:
        """Nothing to wait for on the trainer side: workers read the published snapshot."""
        return None

    def check_connection(self) -> bool:
        return all(link.check_connection() for link in self._live_links())

    def close(self) -> None:
        """Finish any pending publication, tell workers to stop, drop the shared buffers."""
        if self._pending is not None:
            with contextlib.suppress(Exception):  # closing must not raise over an earlier error
                self.finish()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for link in self.links:
            link.close()
        self.rings.clear()


class SharedMemReader:
    """Worker side of the shared-memory transport: adopts the newest published snapshot."""

    carries_weights = True

    #: How often (seconds) a polling worker checks whether the trainer is still there.
    LIVENESS_PERIOD_S = 0.2

    def __init__(self, pipe: Connection, timeout: float = 10.0):
        self.link = MPTransport(pipe, timeout)
        self.link.introduce()  # the trainer watches this process from now on
        self.ring: SnapshotRing | None = None
        self.reader = 0
        self.model_id = ""
        self.held: tuple[int, int] = (_NONE, 0)  # (version, index) adopted by the receiver
        self._refused = _NONE  # the newest version refused: not taken (nor refused) again
        self._pending_registration = False
        self._next_liveness_check = 0.0

    @property
    def closed(self) -> bool:
        return self.link.closed

    def poll(self, timeout: float) -> Update | None:
        deadline = time.monotonic() + timeout
        while True:
            update = self._poll_once(max(0.0, deadline - time.monotonic()))
            if update is not None or time.monotonic() >= deadline or self.closed:
                return update
            time.sleep(min(0.0005, max(0.0, deadline - time.monotonic())))

    def _poll_once(self, timeout: float) -> Update | None:
        if self.ring is None:
            return self._await_registration(timeout)
        now = time.monotonic()
        if now >= self._next_liveness_check:
            self._next_liveness_check = now + self.LIVENESS_PERIOD_S
            if self.link.pipe.poll(0):
                self.link.receive_weights(0)  # CLOSE sets closed; EOF raises PeerDiedError
                if self.closed:
                    return None
        acquired = self.ring.acquire(self.reader, newer_than=max(self.held[0], self._refused))
        if acquired is None:
            return None
        version, index = acquired
        return Update(self.model_id, version, self.ring.buffers[index], zero_copy=True)

    def _await_registration(self, timeout: float) -> Update | None:
        got = self.link.receive_weights(timeout)
        if got is None:
            return None
        model_id, registration = got
        if isinstance(registration, SetupFailed):
            raise SharedMemoryError(
                f"the trainer could not share model {model_id!r}: {registration.reason}"
            )
        if not isinstance(registration, _Registration):
            problem = (
                f"this worker uses the shared-mem scheme, but the trainer sent a "
                f"{type(registration).__name__} instead of shared buffers: it uses another "
                "scheme. Build both ends from the same scheme (the same sync= backend)."
            )
            self.link.send_error(problem)
            raise SchemeMismatchError(problem)
        self.ring, self.reader, self.model_id = registration.ring, registration.reader, model_id
        for buffer in self.ring.buffers:
            _make_read_only(buffer)
        self._pending_registration = True
        acquired = self.ring.acquire(self.reader, newer_than=_NONE)
        if acquired is None:  # nothing published yet cannot happen: registration publishes
            raise PeerDiedError(f"model {model_id!r} was registered without a published snapshot")
        version, index = acquired
        return Update(model_id, version, self.ring.buffers[index], zero_copy=True)

    def acknowledge(self, update: Update) -> None:
        self.ring.adopt(self.reader)
        self.held = (update.version, self.ring.buffers.index(update.buffer))
        if self._pending_registration:
            self._pending_registration = False
            self.link.send_ack()

    def reject(self, update: Update, reason: str) -> None:
        """Keep the snapshot held (the model may point into it), and tell the trainer once: the
        refused version is not taken again, its refusal reaches the trainer's next send."""
        self.ring.drop(self.reader)
        self._refused = max(self._refused, update.version)
        if self._pending_registration:  # the answer is about the registration message
            self._pending_registration = False
            self.ring = None
        else:
            self.link.last_received = (update.model_id, update.version)
        self.link.send_error(reason)

    def close(self) -> None:
        if self.ring is not None:
            self.ring.release_reader(self.reader)
        self.link.pipe.close()
