"""Weights through Ray's object store, for workers that are Ray actors on any node.

Invariant: a version is put in the object store once, whole and immutable; a worker sees it only
once its node holds all of it, and the object store holds a bounded number of versions.

The trainer puts each version's flat buffer in the object store (one copy, made in a thread so
that ``send_async`` returns at once) and posts a reference to it on a :class:`Board`, a small
asynchronous actor the trainer owns. Each worker runs a receiving thread that long-polls the
board for a newer version, fetches the object (Ray pulls it to the worker's node once, however
many workers there share it) and tells the board it ``holds`` it; ``receive()`` then adopts it
without a copy: the model's parameters become views of the object-store buffer, read-only like
every weightsync snapshot. The worker reports ``adopted`` or ``refused``.

The trainer's ``finish`` waits for every chosen worker's receiving thread, not for its rollout:
a busy worker never holds the trainer up. A worker that does not answer within the timeout is
named; one whose actor is dead is named as dead as soon as Ray says so. Only the newest version
is referenced by the trainer and the board, and each worker references the version its model
uses and at most one newer: Ray deletes a version once no one references it (in batches, about
once a second), so the store holds the versions in use plus those released since its last batch.

Ray is an optional dependency (``pip install 'weightsync[ray]'``), imported only when a Ray
transport is built.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from weightsync import lifetime
from weightsync.errors import PeerDiedError, SyncTimeoutError
from weightsync.flat import FlatBuffer, FlatLayout
from weightsync.transports.base import Update
from weightsync.transports.staging import Staging
from weightsync.transports.workers import Failures, ProcessHandle, WorkerSet
from weightsync.weights import FlatWeights

log = logging.getLogger(__name__)

#: How often a waiting trainer looks again for workers that died meanwhile (seconds).
LIVENESS_CHECK_S = 0.25
#: How long a receiving thread waits on one call before it looks whether it was closed.
RECEIVER_TICK_S = 0.5
#: How often a receiving thread given the board's name looks for the board (not created yet).
BOARD_LOOKUP_S = 0.1


def require_ray() -> Any:
    """The ``ray`` module, initialised in this process; a clear error if it is missing or not."""
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "the ray scheme needs Ray: pip install 'weightsync[ray]' (or pip install 'ray')"
        ) from err
    if not ray.is_initialized():
        raise RuntimeError(
            "the ray scheme runs on a Ray instance: call ray.init() (a new local one, or "
            "ray.init(address='auto') to join a running one) before init_on_sender()"
        )
    return ray


class Board:
    """The trainer's notice board, run as an asynchronous Ray actor: per worker the newest
    version offered to it (a reference to the object, never the bytes), and what each worker
    holds, adopted or refused. Workers long-poll :meth:`next`; the trainer waits in
    :meth:`wait_held`."""

    def __init__(self, workers: list[int]):
        self.offers: dict[int, tuple] = {}  # worker -> (version, layout, extra_keys, [ref])
        self.held = dict.fromkeys(workers)  # complete in the worker, adopted at its next receive
        self.adopted = dict.fromkeys(workers)  # its model uses it
        self.refusals: dict[int, tuple[int, str]] = {}  # worker -> (version, reason)
        self.closed = False
        self._changed = asyncio.Event()
        self._waiting = 0  # long polls in progress

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def publish(
        self, version: int, layout: FlatLayout, extra_keys: list[str], ref: list, workers: list[int]
    ) -> None:
        """Offer ``version`` (the object inside the one-element list ``ref``) to ``workers``;
        the versions they were offered before are no longer referenced here."""
        for w in workers:
            self.offers[w] = (version, layout, extra_keys, ref)
        self._notify()

    async def next(self, worker: int, have: int) -> tuple | None:
        """The newest offer to ``worker`` above version ``have``, once there is one; None once
        the board is closed."""
        self._waiting += 1
        try:
            while not self.closed:
                offer = self.offers.get(worker)
                if offer is not None and offer[0] > have:
                    return offer
                await self._changed.wait()
            return None
        finally:
            self._waiting -= 1

    def holds(self, worker: int, version: int) -> None:
        if worker in self.held:
            self.held[worker] = max(self.held[worker] or 0, version)
            self._notify()

    def adopt(self, worker: int, version: int) -> None:
        if worker in self.adopted:
            self.adopted[worker] = max(self.adopted[worker] or 0, version)

    def refuse(self, worker: int, version: int, reason: str) -> None:
        if worker in self.held:
            self.refusals[worker] = (version, reason)
            self._notify()

    async def wait_held(self, version: int, workers: list[int], timeout: float) -> dict:
        """Wait up to ``timeout`` s until each of ``workers`` holds ``version`` (or refused one);
        then the state of every worker."""
        deadline = time.monotonic() + timeout
        while True:
            lagging = [w for w in workers if (self.held.get(w) or 0) < version]
            left = deadline - time.monotonic()
            if not lagging or left <= 0:
                break
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except asyncio.TimeoutError:
                break
        refusals, self.refusals = self.refusals, {}
        return {"held": dict(self.held), "adopted": dict(self.adopted), "refusals": refusals}

    def adopted_versions(self) -> dict[int, int | None]:
        return dict(self.adopted)

    def forget(self, workers: list[int]) -> None:
        for w in workers:
            for table in (self.offers, self.held, self.adopted, self.refusals):
                table.pop(w, None)

    async def close(self, timeout: float) -> None:
        """No more versions: every long poll answers None; returns once they have (or after
        ``timeout`` s), and drops every reference."""
        self.closed = True
        self.offers.clear()
        self._notify()
        deadline = time.monotonic() + timeout
        while self._waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class RaySender:
    """The trainer side: one object-store put per version, posted on the :class:`Board`.

    Args:
        num_workers: how many workers (ids ``0..num_workers-1``) take the updates.
        timeout: seconds a worker may take to hold a version before it is named.
        actors: the workers' Ray actor handles, in worker order (optional): errors then name
            each worker's actor, and a dead actor is named as dead at once.
        board_name: the Ray actor name of the board (workers may find it by this name).
    """

    carries_weights = True
    device_direct = False

    def __init__(
        self,
        num_workers: int,
        timeout: float,
        actors: list | None = None,
        board_name: str | None = None,
    ):
        if num_workers < 1:
            raise ValueError(f"the ray scheme needs at least one worker, got {num_workers}")
        if actors is not None and len(actors) != num_workers:
            raise ValueError(f"{len(actors)} actors given for {num_workers} workers")
        self._ray = require_ray()
        self.timeout = timeout
        self.workers = WorkerSet(num_workers)
        self.actors = actors
        self.board = (
            self._ray.remote(Board)
            .options(num_cpus=0, max_concurrency=1000, name=board_name)
            .remote(self.workers.live)
        )
        try:  # a new actor is a new process (importing torch): seconds on a loaded node
            self._ray.get(self.board.__ray_ready__.remote(), timeout=timeout)
        except self._ray.exceptions.GetTimeoutError:
            self._ray.kill(self.board)
            raise SyncTimeoutError(
                f"the trainer's Ray board actor did not start within {timeout:g} s (a loaded "
                "node, or no room in the cluster); raise the scheme's timeout"
            ) from None
        self.staging = Staging(shared=False)  # private: the object store holds the copies
        self._putter = ThreadPoolExecutor(1, thread_name_prefix="weightsync-ray-put")
        self._posting: Future | None = None
        self._pending: tuple[str, int, list[int]] | None = None  # model id, version, workers
        self._newest: Any = None  # the trainer's reference to the newest version
        self._adopted: dict[int, int | None] = dict.fromkeys(self.workers.live)
        self._closed = False

    @property
    def acked_versions(self) -> dict[int, int | None]:
        """Per live worker, the version its model is known to use, asked of the board (which
        hears of an adoption a moment after the worker's ``receive()`` returns)."""
        if not self._closed:
            adopted = self._ray.get(self.board.adopted_versions.remote(), timeout=self.timeout)
            self._adopted = {w: adopted.get(w) for w in self.workers.live}
        return dict(self._adopted)

    @property
    def shared_bytes(self) -> int:
        """None of its own: its staging buffers are private; the versions live in Ray's object
        store, Ray's memory."""
        return self.staging.shared_bytes

    #: One object put per send; the object store pulls it to each other node once (Ray's own
    #: transfers, not counted here).
    copies_per_send = 1

    def watch_processes(self, processes: Sequence[ProcessHandle] | None) -> None:
        """Ray actors are not the trainer's processes: their deaths are asked of Ray
        (``actors``)."""

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer:
        """The trainer's model may live in the buffer that is put: a send then copies it once,
        into the object store."""
        return self.staging.source(weights)

    def retired(self, buffer: FlatBuffer) -> bool:
        """Only when the weights outgrew it (the object store holds copies: no worker reads
        the trainer's buffer, so none is ever retired for a failed one)."""
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
        targets = self.workers.targets(worker_ids)
        _, buffer = self.staging.stage(weights, source)  # never into the model for given weights
        self._posting = self._putter.submit(self._post, version, buffer, targets)
        self._pending = (model_id, version, targets)

    def _post(self, version: int, buffer: FlatBuffer, targets: list[int]) -> None:
        """Put the buffer in the object store and offer it (runs in the put thread)."""
        ref = self._ray.put(buffer.data.numpy())
        posted = self.board.publish.remote(version, buffer.layout, buffer.extra_keys, [ref],
                                           targets)  # fmt: skip
        try:
            self._ray.get(posted, timeout=self.timeout)
        except self._ray.exceptions.GetTimeoutError:
            raise SyncTimeoutError(
                f"the trainer's Ray board did not take version {version} within "
                f"{self.timeout:g} s (its actor is stalled: a loaded node?)",
                workers=targets,
            ) from None
        self._newest = ref  # the previous version is no longer referenced here

    def finish(self, timeout: float | None = None) -> None:
        if self._pending is None:
            return
        (model_id, version, targets), self._pending = self._pending, None
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        try:
            self._posting.result(timeout=timeout)
        except SyncTimeoutError:
            raise
        except TimeoutError:
            raise SyncTimeoutError(
                f"version {version} of model {model_id!r} could not be put in Ray's object "
                f"store within {timeout:g} s (is the store full, or the trainer's node "
                "overloaded?)",
                workers=targets,
            ) from None
        pings: dict[int, Any] = {}
        while True:
            left = max(0.0, deadline - time.monotonic())
            state = self._ray.get(
                self.board.wait_held.remote(version, targets, min(left, LIVENESS_CHECK_S)),
                timeout=self.timeout + LIVENESS_CHECK_S,
            )
            self._adopted = {w: state["adopted"].get(w) for w in self.workers.live}
            failures = Failures()
            for w, (_, reason) in state["refusals"].items():
                failures.add_refused(w, reason)
            lagging = [w for w in targets if (state["held"].get(w) or 0) < version]
            if not lagging and not failures:
                return
            for w, why in self._dead(lagging, pings).items():
                failures.add_dead(
                    w,
                    f"{self._names([w])} died: version {version} of model {model_id!r} cannot "
                    f"reach it ({why}); go on without it with "
                    "get_sender().remove_workers(err.workers)",
                )
            if time.monotonic() >= deadline:
                for w in set(lagging) - set(failures.dead):
                    failures.add_silent(
                        w,
                        f"{self._names([w])} did not take version {version} of model "
                        f"{model_id!r} within {timeout:g} s (its receiving thread did not "
                        "answer: is the actor's process stopped, or its node unreachable?); "
                        "raise the scheme's timeout, or go on without it with "
                        "get_sender().remove_workers(err.workers)",
                    )
            failures.raise_any(model_id, version)

    def _dead(self, lagging: list[int], pings: dict[int, Any]) -> dict[int, str]:
        """Which of ``lagging`` have a dead actor (with Ray's reason); asks each at most once."""
        if self.actors is None:
            return {}
        for w in lagging:
            if w not in pings:
                pings[w] = self.actors[w].__ray_ready__.remote()
        ready, _ = self._ray.wait(list(pings.values()), num_returns=len(pings), timeout=0)
        dead = {}
        for w, ping in list(pings.items()):
            if ping not in ready:
                continue
            try:
                self._ray.get(ping)
            except self._ray.exceptions.RayActorError as err:
                dead[w] = str(err).splitlines()[0]
        return {w: why for w, why in dead.items() if w in lagging}

    def _names(self, workers: Any) -> str:
        """``worker 1 (Ray actor 5f3a...)``, for each worker."""
        names = []
        for w in sorted(workers):
            actor = f" (Ray actor {self.actors[w]._actor_id.hex()[:12]})" if self.actors else ""
            names.append(f"worker {w}{actor}")
        return ", ".join(names)

    def remove_workers(self, worker_ids: list[int]) -> None:
        self.workers.remove(worker_ids)
        self._adopted = {w: v for w, v in self._adopted.items() if self.workers.is_live(w)}
        if not self._closed:
            self.board.forget.remote(list(worker_ids))

    def close(self) -> None:
        """Tell every worker no more versions come, then end the board and drop every
        reference (the object store frees the versions no worker still uses)."""
        if self._closed:
            return
        self._closed = True
        self._putter.shutdown(wait=True)
        try:
            self._ray.get(self.board.close.remote(self.timeout), timeout=self.timeout + 1)
        except Exception as err:  # closing: a board already gone has nothing left to close
            log.debug("the ray board did not close cleanly: %s", err)
        self._ray.kill(self.board, no_restart=True)
        self._newest = self._posting = None


class RayReceiver:
    """One worker's side: a receiving thread fetches each newer version to this node while the
    worker acts; :meth:`poll` hands over the newest one complete, to adopt without a copy."""

    carries_weights = True

    def __init__(self, board: Any, worker_id: int, model_id: str | None, timeout: float):
        """``board``: the trainer's board actor, or its name (looked up until it exists)."""
        self._ray = require_ray()
        self.board = board
        self.worker_id = worker_id
        self.model_id = model_id
        self.timeout = timeout
        self._lock = threading.Condition()
        self._ready: tuple[Update, Any] | None = None  # fetched, not yet handed over
        self._using: Any = None  # the reference of the version handed over last
        self._closed = False
        self._trainer_lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._receive_loop, name=f"weightsync-ray-receiver-{worker_id}", daemon=True
        )
        lifetime.close_at_exit(self)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def _find_board(self) -> bool:
        """Look the board up by its name until the trainer has created it (or this receiver is
        closed: the caller's wait for the initial weights bounds how long that may take)."""
        while isinstance(self.board, str) and not self._stop.is_set():
            try:
                self.board = self._ray.get_actor(self.board)
            except ValueError:  # not created yet
                self._stop.wait(BOARD_LOOKUP_S)
        return not self._stop.is_set()

    def _receive_loop(self) -> None:
        have, call = 0, None
        if not self._find_board():
            return
        while not self._stop.is_set():
            try:
                if call is None:
                    call = self.board.next.remote(self.worker_id, have)
                ready, _ = self._ray.wait([call], timeout=RECEIVER_TICK_S)
                if not ready:
                    continue
                offer, call = self._ray.get(call), None
                if offer is None:
                    self._end(closed=True)
                    return
                version, layout, extra_keys, (ref,) = offer
                buffer = FlatBuffer(layout, _read_only_tensor(self._ray.get(ref)),
                                    extra_keys=extra_keys)  # fmt: skip
                with self._lock:
                    self._ready = (Update(self.model_id, version, buffer, zero_copy=True), ref)
                    self._lock.notify_all()
                self.board.holds.remote(self.worker_id, version)
                have = version
            except Exception as err:  # the board (the trainer's) is gone, or Ray is
                self._end(lost=f"{type(err).__name__}: {str(err).splitlines()[0]}")
                return

    def _end(self, *, closed: bool = False, lost: str | None = None) -> None:
        with self._lock:
            self._closed = self._closed or closed
            self._trainer_lost = lost
            self._lock.notify_all()

    def poll(self, timeout: float) -> Update | None:
        with self._lock:
            if self._ready is None and not self._closed and self._trainer_lost is None:
                self._lock.wait(timeout)
            if self._ready is not None:
                (update, self._using), self._ready = self._ready, None
                return update
            if self._trainer_lost is not None and not self._closed:
                raise PeerDiedError(
                    f"worker {self.worker_id} lost the trainer of model {self.model_id!r}: its "
                    f"Ray board no longer answers ({self._trainer_lost})"
                )
            return None

    def acknowledge(self, update: Update) -> None:
        self.board.adopt.remote(self.worker_id, update.version)

    def reject(self, update: Update, reason: str) -> None:
        self.board.refuse.remote(self.worker_id, update.version, reason)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=2 * RECEIVER_TICK_S + 1)
        lifetime.closed(self)


def _read_only_tensor(array: Any) -> torch.Tensor:
    """A CPU byte tensor over ``array`` (an object-store buffer, read-only): no copy. Torch
    warns that it cannot protect the buffer; weightsync never writes into a received version."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)
