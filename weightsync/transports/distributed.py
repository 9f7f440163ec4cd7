"""Weights over ``torch.distributed`` point-to-point links, for workers on other machines.

Invariant: a worker's model never sees a byte of an update before the whole update has arrived,
and the trainer never waits for a worker's main thread.

The trainer owns a private ``TCPStore`` (listening only on ``host``) and, per worker, a private
two-rank gloo :class:`~weightsync.transports.c10d.Link` (never the user's default group). An
update is a header, the layout as JSON when it changed, and the flat buffer in one ``send`` per
worker, all asynchronous: ``send_async`` returns at once.

A CUDA model's buffer stays on its GPU: it crosses on the link's NCCL group to every worker
whose model is on a GPU too (the worker says so when it joins), GPU to GPU. A worker without
one, or a trainer without NCCL, gets it through a host copy, with a warning.

Each worker runs a receiving thread that takes the update into the buffer its model is not
using while the worker acts, then tells the trainer ``busy`` unless the worker is waiting in
``receive()``; ``receive()`` only adopts the complete buffer (zero copy) and answers ``applied``
or ``refused``. The trainer's ``finish`` therefore waits for each worker's receiving thread, not
for its rollout: a busy worker is never timed out, a silent one is (its receiving thread does not
answer: the process is stopped or unreachable), and a dead one is named as soon as its socket
closes. Other workers' links are untouched by either, so the survivors keep receiving.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from weightsync import lifetime
from weightsync.errors import (
    PeerDiedError,
    SyncTimeoutError,
    WeightSyncError,
)
from weightsync.flat import FlatBuffer
from weightsync.transports.base import Update
from weightsync.transports.c10d import (
    Link,
    Mark,
    PendingSends,
    as_bytes,
    decode_layout,
    empty_header,
    encode_layout,
    gpu_uuid,
    header,
    open_store,
)
from weightsync.transports.routing import (
    HOST_STAGING_WARNING,
    Route,
    WarnOnce,
    nccl_keys_done,
    routes,
    staging_device,
)
from weightsync.transports.staging import Staging
from weightsync.transports.workers import Failures, ProcessHandle, WorkerSet
from weightsync.weights import FlatWeights

log = logging.getLogger(__name__)

DATA, ANSWER = 1, 2  # gloo tags: trainer -> worker, worker -> trainer
#: Seconds between two looks at the watched worker processes while the trainer waits.
_EXIT_CHECK_S = 0.1


class Msg(enum.IntEnum):
    """What a header announces."""

    UPDATE = 1  # trainer: a version follows (its layout first, when it changed)
    CLOSE = 2  # trainer: no more updates
    HELLO = 3  # worker: joined (the link's rendezvous keys may go); then its GPU's UUID, if any
    BUSY = 4  # worker: holds the version complete, adopts it at its next receive()
    APPLIED = 5  # worker: its model now holds the version
    REFUSED = 6  # worker: refused the version (the reason follows)
    LEAVING = 7  # worker: shutting down; answer CLOSE
    BYE = 8  # worker: its receiving thread has ended
    ALIVE = 9  # trainer: a heartbeat on an idle link; worker: its echo (the same number)
    ROLE = 10  # trainer (per-host fan-out): the worker's part on its host, as JSON
    SNAPSHOT = 11  # trainer (per-host fan-out): a version published in the host's snapshots


def link_prefix(worker_id: int) -> str:
    return f"weightsync/link/{worker_id}"


class _TrainerLink:
    """The trainer's end of one worker's link: joins it, then reads the worker's answers."""

    def __init__(self, worker_id: int, owner: DistributedSender):
        self.worker_id = worker_id
        self.owner = owner
        self.link: Link | None = None
        self.failure: str | None = None  # why this worker can no longer be reached
        self.died = False  # its process is known to have ended
        self.answers: dict[int, str] = {}  # version -> "busy", "applied" or a refusal
        self.acked: int | None = None
        self.said_hello = False
        self.gpu: str | None = None  # the UUID of the GPU the worker receives on, if any
        self.host: str | None = None  # the worker's host key (see transports/host_ring.py)
        self.nccl_rendezvous: int | None = None  # the first NCCL update, while its keys stay
        self.nccl_joined = False  # the worker received over NCCL: its group's keys are gone
        self.beats = 0  # heartbeats sent
        self.layout_sent: bytes | None = None
        self.pending = PendingSends()
        self.last_sent = time.monotonic()
        self._send_lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._run, name=f"weightsync-link-{worker_id}", daemon=True
        )
        self.thread.start()

    @property
    def usable(self) -> bool:
        return self.link is not None and self.failure is None

    @property
    def joined(self) -> bool:
        """The worker said hello (or can no longer be reached)."""
        return self.said_hello or self.failure is not None

    def send(self, *tensors: torch.Tensor, mark: Mark | None = None) -> None:
        """Queue ``tensors`` (the message ``mark``, if the worker answers it) to the worker, in
        order, without waiting."""
        with self._send_lock:
            for tensor in tensors:
                self.pending.add(self.link.send(tensor, DATA), tensor, mark)
            self.last_sent = time.monotonic()

    def sending_from(self, buffer: FlatBuffer) -> bool:
        """Whether a send reading ``buffer`` may still be in flight."""
        return self.pending.reading(buffer.data)

    def _run(self) -> None:
        owner = self.owner
        try:
            link = Link(
                owner.store, link_prefix(self.worker_id), 0, timeout=owner.join_timeout,
                bind=owner.bind,
            )  # fmt: skip
        except RuntimeError as err:
            self._fail(f"could not join within {owner.join_timeout:g} s: {_first_line(err)}")
            return
        with owner.cond:
            self.link = link
            owner.cond.notify_all()
        try:
            self._read_answers(link)
        except RuntimeError as err:
            if not owner.closing:
                self._fail(f"its connection broke ({_first_line(err)}); the process has died")

    def _read_answers(self, link: Link) -> None:
        owner = self.owner
        while True:
            msg = empty_header()
            link.recv(msg, ANSWER)
            kind, version, length, _ = msg.tolist()
            if kind == Msg.HELLO:
                link.forget_keys("gloo")
                hello = json.loads(_recv_text(link, length)) if length else {}
                with owner.cond:
                    self.said_hello, self.gpu, self.host = True, hello.get("gpu"), hello.get("host")
                    owner.cond.notify_all()
                continue
            if kind == Msg.BYE:
                return
            if kind == Msg.ALIVE:  # the echo of heartbeat ``version``: it has arrived
                self.pending.settle(("alive", version))
                continue
            if kind == Msg.LEAVING:
                self._fail("has shut its receiver down")
                self.send(header(Msg.CLOSE))
                continue
            answer = {Msg.BUSY: "busy", Msg.APPLIED: "applied"}.get(kind)
            if kind == Msg.REFUSED:
                answer = _recv_text(link, length)
            # The worker has the whole update: its sends are complete (on the GPU too) before
            # finish() hears of it, and the trainer may write the buffer again.
            self.pending.settle(("update", version))
            received = kind in (Msg.BUSY, Msg.APPLIED)
            if nccl_keys_done(self.nccl_rendezvous, version, received):
                link.forget_keys("nccl")  # the worker received over NCCL: both ranks joined it
                self.nccl_rendezvous, self.nccl_joined = None, True
            with owner.cond:
                if kind == Msg.APPLIED:
                    self.acked = max(version, self.acked or 0)
                if version in owner.waiting_for:
                    self.answers[version] = answer
                elif kind == Msg.REFUSED:
                    log.warning("worker %d refused version %d: %s", self.worker_id, version, answer)
                owner.cond.notify_all()

    def _fail(self, reason: str) -> None:
        with self.owner.cond:
            first = self.failure is None
            self.failure = self.failure or reason
            self.owner.cond.notify_all()
        if self.link is not None:
            self.link.abort()
        if first:
            self.owner.link_failed(self.worker_id, reason)


class DistributedSender:
    """Trainer side: the store, one link per worker, asynchronous sends.

    Args:
        num_workers: how many workers join (worker ids ``0..num_workers-1``).
        host: the address the store listens on (only there), as the workers reach it.
        port: the store's port; 0 picks a free one (read it back from ``port``).
        timeout: seconds ``finish`` waits for each worker's receiving thread.
        join_timeout: seconds each worker has to join its link.
        bind: this process's address or interface for its links; None: torch's default
            (``GLOO_SOCKET_IFNAME`` honoured).
        use_nccl: keep a CUDA model's buffer on its GPU and send it over NCCL to the workers
            that take CUDA data; False: every update goes through host memory.
        heartbeat: seconds between heartbeats on a link that is otherwise idle, so a worker
            notices a trainer whose host went down without closing its sockets; 0: none.
    """

    carries_weights = True
    device_direct = True  # CUDA weights: this transport chooses, and warns when it stages them

    def __init__(
        self,
        num_workers: int,
        host: str,
        port: int,
        timeout: float,
        *,
        join_timeout: float,
        bind: str | None = None,
        use_nccl: bool = False,
        heartbeat: float = 0.0,
    ):
        if num_workers < 1:
            raise ValueError(f"the distributed scheme needs num_workers >= 1, got {num_workers}")
        self.timeout = timeout
        self.join_timeout = join_timeout
        self.bind = bind
        self.use_nccl = use_nccl
        self.store = open_store(host, port, is_master=True, timeout=join_timeout)
        self.port = self.store.port
        self.cond = threading.Condition()
        self.closing = False
        self.waiting_for: set[int] = set()  # versions whose answers are recorded
        self.workers = WorkerSet(num_workers)
        self.staging = Staging(shared=False, device_for=self._device_for)
        self._host: FlatBuffer | None = None  # a CUDA buffer's copy, for workers without CUDA
        self._warn = WarnOnce()
        self._layout: tuple[FlatBuffer, bytes] | None = None  # the staging buffer's JSON layout
        self._in_flight: tuple[str, int, list[int], FlatBuffer] | None = None
        self.links = {w: _TrainerLink(w, self) for w in range(num_workers)}
        self._stop_beating = threading.Event()
        self._heart: threading.Thread | None = None
        if heartbeat > 0:
            self._heart = threading.Thread(
                target=self._beat, args=(heartbeat,), name="weightsync-heartbeat", daemon=True
            )
            self._heart.start()

    @property
    def acked_versions(self) -> dict[int, int | None]:
        with self.cond:
            return {w: link.acked for w, link in self.links.items()}

    @property
    def shared_bytes(self) -> int:
        """Bytes of shared memory this transport holds: none (its buffers are private)."""
        return self.staging.shared_bytes

    @property
    def copies_per_send(self) -> int:
        """One copy over each live worker's link."""
        return len(self.workers.live)

    def watch_processes(self, processes: Sequence[ProcessHandle] | None) -> None:
        """The workers' processes, where the trainer started them (see
        :meth:`WorkerSet.watch`): a worker that dies before it joined, or while an update is
        in flight, is named at once with its exit code instead of waited for."""
        self.workers.watch(processes)

    def _fail_exited(self, workers: list[int], doing: str) -> bool:
        """Mark each of ``workers`` whose process has ended as failed (``doing``: what it did not
        do); True if any. Called with ``cond`` held, at least every :data:`_EXIT_CHECK_S`."""
        found = False
        for w in workers:
            link = self.links.get(w)
            if link is not None and link.failure is None and (how := self.workers.exit_of(w)):
                link.died = True
                link._fail(f"died before it {doing}: {how}")
                found = True
        return found

    def rendezvous(self, timeout: float | None = None) -> None:
        """Block until every worker has joined its link and said hello; an error naming the
        others (PeerDiedError when one of them is known dead, else SyncTimeoutError)."""
        deadline = time.monotonic() + (self.join_timeout if timeout is None else timeout)
        with self.cond:
            while unjoined := [w for w, link in self.links.items() if not link.joined]:
                if self._fail_exited(unjoined, "joined its link"):
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(min(remaining, _EXIT_CHECK_S))
            missing = {w: link.failure or "did not join" for w, link in self.links.items()
                       if not (link.usable and link.joined)}  # fmt: skip
            died = any(self.links[w].died for w in missing)
        if missing:
            lines = "; ".join(f"worker {w} {why}" for w, why in sorted(missing.items()))
            raise (PeerDiedError if died else SyncTimeoutError)(
                f"not every worker joined the trainer's store on port {self.port}: {lines}. "
                "Start every worker with the same host/port, or raise join_timeout",
                workers=sorted(missing),
            )

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer | None:
        """The buffer the trainer's model may live in: sends then copy nothing."""
        return self.staging.source(weights)

    def _device_for(self, weights: FlatWeights) -> torch.device:
        """Where the buffer for ``weights`` lives (see :func:`staging_device`); CUDA weights
        staged in host memory are warned about once."""
        device, fell_back = staging_device(
            (t.device for t in weights.tensors.values()), self.use_nccl
        )
        if fell_back:
            self._warn("host", HOST_STAGING_WARNING, stacklevel=6)
        return device

    def retired(self, buffer: FlatBuffer) -> bool:
        """True for a buffer the trainer's model must move out of: a timed-out worker's send
        may still read from it, or a newer one replaced it."""
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
        """Queue the update to every chosen worker and return (no waiting on any worker)."""
        targets = self.workers.targets(worker_ids)
        _, buffer = self.staging.stage(weights, source)
        if self._layout is None or self._layout[0] is not buffer:
            self._layout = (buffer, encode_layout(buffer.layout, buffer.extra_keys))
        layout = self._layout[1]
        with self.cond:
            self.waiting_for = {version}
            for link in self.links.values():
                link.answers.clear()
        buffer_gpu = gpu_uuid(buffer.data.device) if buffer.data.is_cuda else None
        ways = routes(buffer_gpu, {w: self.links[w].gpu for w in targets}, self.use_nccl)
        host = self._host_copy(buffer, [w for w, way in ways.items() if way is Route.HOST_COPY])
        for w in targets:
            link = self.links[w]
            if not link.usable:
                continue  # named by finish()
            data = host.data if ways[w] is Route.HOST_COPY else buffer.data
            try:
                self._send_update(link, version, layout, data)
            except RuntimeError as err:
                link._fail(f"cannot be sent to ({_first_line(err)})")
        self._in_flight = (model_id, version, targets, buffer)

    def _send_update(
        self, link: _TrainerLink, version: int, layout: bytes, data: torch.Tensor | None
    ) -> None:
        """Queue one update to one worker: the header, the layout when it changed, and ``data``
        (None: no data, the worker takes the version from its host's snapshots)."""
        if data is not None and data.is_cuda and not link.nccl_joined:
            link.nccl_rendezvous = link.nccl_rendezvous or version
        fresh = link.layout_sent != layout
        if data is None:
            message = header(Msg.SNAPSHOT, version, len(layout) if fresh else 0)
        else:
            message = header(Msg.UPDATE, version, len(layout) if fresh else 0, int(data.is_cuda))
        tensors = [message, *([as_bytes(layout)] if fresh else [])]
        link.send(*tensors, *([] if data is None else [data]), mark=("update", version))
        link.layout_sent = layout

    def link_failed(self, worker_id: int, reason: str) -> None:
        """A worker's link has just failed (``reason``); the per-host fan-out names those it
        served."""

    def _host_copy(self, buffer: FlatBuffer, workers: list[int]) -> FlatBuffer | None:
        """For a buffer on the GPU, the host copy sent to ``workers`` (those routed
        :attr:`Route.HOST_COPY`); None when nobody needs one."""
        if not workers:
            return None
        self._warn(
            "workers",
            f"worker(s) {workers} cannot take the model on a GPU over NCCL (their model is not on "
            "a GPU, they have no NCCL, or their GPU is the trainer's): they get each update "
            "through a copy in host memory",
            stacklevel=4,
        )
        if self._host is None or self._host.layout != buffer.layout:
            self._host = FlatBuffer(buffer.layout, extra_keys=buffer.extra_keys, shared=False)
        self._host.data.copy_(buffer.data)
        return self._host

    def finish(self, timeout: float | None = None) -> None:
        """Wait until every chosen worker holds the update (applied, or complete and waiting
        for its next ``receive()``); raise naming each worker that is dead, silent or refused."""
        if self._in_flight is None:
            return
        model_id, version, targets, buffer = self._in_flight
        self._in_flight = None
        targets = [w for w in targets if w in self.links]  # removed meanwhile: not waited for
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        with self.cond:
            while True:
                pending = [w for w in targets if version not in self.links[w].answers
                           and self.links[w].failure is None]  # fmt: skip
                if self._fail_exited(pending, f"received version {version} of model {model_id!r}"):
                    continue
                remaining = deadline - time.monotonic()
                if not pending or remaining <= 0:
                    break
                self.cond.wait(min(remaining, _EXIT_CHECK_S))
            answers = {w: self.links[w].answers.get(version) for w in targets}
            dead = {w: self.links[w].failure for w in targets if answers[w] is None
                    and self.links[w].failure}  # fmt: skip
            self.waiting_for = set()
            for w in pending + list(dead):
                self.links[w].acked = None
        if any(self.links[w].sending_from(buffer) for w in pending):
            self.staging.retire(buffer)  # a stopped worker may read it when it resumes
        if self._host is not None and any(self.links[w].sending_from(self._host) for w in pending):
            self._host = None  # the same: the next update gets a fresh host copy
        failures = Failures()
        for w, why in sorted(dead.items()):
            failures.add_dead(w, f"worker {w} {why}")
        for w in pending:
            failures.add_silent(
                w,
                f"worker {w} did not receive version {version} of model {model_id!r} within "
                f"{wait:g} s (its receiving thread is silent: the process is stopped or hung, or "
                "the network is down; a worker that is merely busy still receives)",
            )
        for w, answer in answers.items():
            if answer not in (None, "busy", "applied"):
                failures.add_refused(w, answer)
        failures.raise_any(model_id, version)

    def remove_workers(self, worker_ids: list[int]) -> None:
        """Go on without these workers: their links are never sent to again (a transfer to one
        still pending on the GPU is aborted)."""
        for w in self.workers.remove(worker_ids):
            link = self.links.pop(w)
            if link.link is not None:
                link.link.abort()

    def _beat(self, interval: float) -> None:
        """Send a heartbeat on every live link that sent nothing for ``interval`` s."""
        while not self._stop_beating.wait(interval / 2):
            for link in list(self.links.values()):
                if link.usable and time.monotonic() - link.last_sent >= interval:
                    try:
                        link.beats += 1
                        link.send(header(Msg.ALIVE, link.beats), mark=("alive", link.beats))
                    except RuntimeError as err:
                        link._fail(f"cannot be sent to ({_first_line(err)})")

    def close(self) -> None:
        """Tell every worker no more updates come, wait (bounded) for them to say goodbye."""
        self.closing = True
        self._stop_beating.set()
        if self._heart is not None:
            self._heart.join()
        for link in self.links.values():
            if link.usable:
                try:
                    link.send(header(Msg.CLOSE))
                except RuntimeError:
                    continue
        deadline = time.monotonic() + min(self.timeout, 5.0)
        for link in self.links.values():  # joined, not just ended: see DistributedReceiver
            link.thread.join(max(0.0, deadline - time.monotonic()))


class DistributedReceiver:
    """Worker side: a receiving thread fills the spare buffer; ``poll`` hands it over.

    Args:
        worker_id: this worker's index, ``0 <= worker_id < num_workers``.
        host, port: where the trainer's store listens.
        join_timeout: seconds to reach the store and join the link.
        bind: this process's address or interface; None: torch's default.
        device: the GPU this worker's model lives on, to take CUDA updates over NCCL into it;
            None: updates arrive in host memory.
        silence: seconds without a word from the trainer (heartbeats included) after which it
            counts as lost, its host down or unreachable; None: wait forever.
    """

    carries_weights = True

    def __init__(
        self,
        worker_id: int,
        host: str,
        port: int,
        *,
        join_timeout: float,
        bind: str | None,
        device: torch.device | None = None,
        silence: float | None = None,
    ):
        self.worker_id = worker_id
        self.model_id = ""
        self.device = device
        self.silence = silence
        self._cond = threading.Condition()
        self._closed = False
        self._error: WeightSyncError | None = None
        self._waiting = False  # the main thread is blocked in poll()
        self._ready: Update | None = None  # complete, not handed out yet
        self._taken: Update | None = None  # handed out, not answered yet
        self._active: FlatBuffer | None = None  # the buffer the model uses
        self._held = -1  # the version the model holds (its buffer is _active)
        self._buffers: list[FlatBuffer] = []  # of the current layout
        self._layout: tuple[Any, list[str]] | None = None
        self._answer_lock = threading.Lock()
        self._answers = PendingSends()  # answers in flight to the trainer
        self._link: Link | None = None
        self._thread = threading.Thread(
            target=self._run, args=(host, port, join_timeout, bind),
            name=f"weightsync-receiver-{worker_id}", daemon=True,
        )  # fmt: skip
        self._thread.start()
        # The receiving thread must have ended before the interpreter finalises: a daemon thread
        # still unwinding (or waking from a torch call) then aborts the whole process.
        lifetime.close_at_exit(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def poll(self, timeout: float) -> Update | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._ready is None and self._error is None and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._waiting = True
                self._cond.wait(remaining)
                self._waiting = False
            if self._ready is not None:
                self._taken, self._ready = self._ready, None
                return self._taken
            if self._error is not None:
                raise self._error
            return None

    def acknowledge(self, update: Update) -> None:
        with self._cond:
            if update.version > self._held:  # an older one is only answered, never adopted
                self._active, self._held = update.buffer, update.version
            self._taken = None
            self._cond.notify_all()
        self._answer(header(Msg.APPLIED, update.version))

    def reject(self, update: Update, reason: str) -> None:
        with self._cond:
            self._taken = None
            self._cond.notify_all()
        self._answer(header(Msg.REFUSED, update.version, len(reason.encode())), as_bytes(reason))

    def close(self) -> None:
        """Leave: the trainer answers CLOSE, which ends the receiving thread."""
        if self._link is not None and self._thread.is_alive() and not self._closed:
            self._answer(header(Msg.LEAVING))
        self._thread.join(timeout=5.0)
        lifetime.closed(self)

    # ------------------------------------------------------------------ receiving thread
    def _run(self, host: str, port: int, join_timeout: float, bind: str | None) -> None:
        try:
            store = open_store(host, port, is_master=False, timeout=join_timeout)
            self._link = Link(
                store, link_prefix(self.worker_id), 1, timeout=join_timeout, bind=bind
            )
        except (RuntimeError, OSError) as err:
            self._stop(
                SyncTimeoutError(
                    f"worker {self.worker_id} could not join the trainer at {host}:{port} "
                    f"within {join_timeout:g} s: {_first_line(err)}"
                )
            )
            return
        hello = as_bytes(json.dumps(self._hello()))
        self._answer(header(Msg.HELLO, length=hello.numel()), hello)
        try:
            while self._receive_one(self._link):
                pass
            self._answer(header(Msg.BYE))
        except TimeoutError:
            self._drop_link()
            self._stop(
                PeerDiedError(
                    f"worker {self.worker_id} heard nothing from the trainer for {self.silence:g} "
                    "s, not even its heartbeat: its host is down or unreachable"
                )
            )
            return
        except WeightSyncError as err:  # e.g. its host's relay died (per-host fan-out)
            self._stop(err)
            return
        except RuntimeError as err:
            self._stop(
                PeerDiedError(
                    f"worker {self.worker_id} lost the trainer ({_first_line(err)}); the trainer "
                    "has probably exited"
                )
            )
            self._drop_link()
            return
        except ValueError as err:  # a layout that does not parse: nothing more can be trusted
            self._stop(WeightSyncError(f"worker {self.worker_id} stops receiving: {err}"))
            return
        self._stop(None)

    def _hello(self) -> dict[str, Any]:
        """What the worker tells the trainer when it joins: the GPU it receives on, if any."""
        return {"gpu": None if self.device is None else gpu_uuid(self.device)}

    def _receive_one(self, link: Link) -> bool:
        """Receive the next message; False once the trainer closed."""
        msg = empty_header()
        link.recv(msg, DATA, timeout=self.silence)
        kind, version, layout_len, on_gpu = msg.tolist()
        if kind == Msg.CLOSE:
            return False
        self._answers.settle()  # the trainer is reading: the answers sent so far are complete
        if kind == Msg.ALIVE:
            self._answer(header(Msg.ALIVE, version))  # lets the trainer collect its heartbeats
            return True
        layout = None
        if layout_len:
            raw = torch.empty(layout_len, dtype=torch.uint8)
            link.recv(raw, DATA)
            layout = bytes(raw.numpy())
        update = self._take(link, Msg(kind), version, layout, bool(on_gpu))
        if update is None:
            return True
        with self._cond:
            self._ready = update
            idle = self._waiting
            self._cond.notify_all()
        if not idle:
            self._answer(header(Msg.BUSY, version))
        return True

    def _take(
        self, link: Link, kind: Msg, version: int, layout: bytes | None, on_gpu: bool
    ) -> Update | None:
        """Take in what the header ``kind`` announced (``layout``: the new JSON layout, if it
        changed): the update to hand to ``poll``, or None when there is none to hand."""
        if layout is not None:
            self._layout = decode_layout(layout)
        if kind != Msg.UPDATE:
            raise ValueError(f"unexpected message {kind.name} from the trainer")
        if on_gpu and self.device is None:
            raise ValueError("the trainer sent a GPU update to a worker that takes none")
        target = self._spare(self.device if on_gpu else torch.device("cpu"))
        link.recv(target.data, DATA)
        return Update(self.model_id, version, target, zero_copy=True)

    def _spare(self, device: torch.device) -> FlatBuffer:
        """A buffer on ``device`` to receive into: the one holding a superseded, unadopted
        update, or one the model does not use (waiting while the main thread adopts an update:
        microseconds)."""
        layout, extra_keys = self._layout

        def fits(buffer: FlatBuffer) -> bool:
            return buffer.layout == layout and buffer.data.device == device

        with self._cond:
            while self._taken is not None and self._error is None:
                self._cond.wait()
            if self._ready is not None:  # superseded before it was adopted: coalesce
                target, self._ready = self._ready.buffer, None
                if fits(target):
                    return target
            self._buffers = [b for b in self._buffers if fits(b)]
            for buffer in self._buffers:
                if buffer is not self._active:
                    return buffer
            data = layout.allocate(shared=False, device=device)
            buffer = FlatBuffer(layout, data, extra_keys=extra_keys)
            self._buffers.append(buffer)
            return buffer

    def _drop_link(self) -> None:
        """The trainer is gone: nobody to answer any more."""
        with self._answer_lock:
            self._link, self._answers = None, PendingSends()

    def _answer(self, *tensors: torch.Tensor) -> None:
        with self._answer_lock:
            if self._link is None:  # the trainer is gone: nobody to answer
                return
            try:
                for tensor in tensors:
                    self._answers.add(self._link.send(tensor, ANSWER), tensor)
            except RuntimeError as err:
                self._stop(PeerDiedError(f"worker {self.worker_id} lost the trainer: {err}"))

    def _stop(self, error: WeightSyncError | None) -> None:
        with self._cond:
            if error is None:
                self._closed = True
            else:
                self._error = self._error or error
            self._cond.notify_all()


def _recv_text(link: Link, length: int) -> str:
    raw = torch.empty(length, dtype=torch.uint8)
    link.recv(raw, ANSWER)
    return bytes(raw.numpy()).decode(errors="replace")


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
