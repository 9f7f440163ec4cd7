"""Weights broadcast over ``torch.distributed``, for workers on other machines.

The trainer is rank 0 of a process group of its own (a private ``TCPStore`` and a gloo group built
from it), never the user's default group, so weightsync can live beside a training job's own
``torch.distributed`` set-up. The store carries the small things: the layout (once), the pending
version, extra states, acknowledgements and refusals. The weights themselves travel as one flat
byte tensor in a single ``broadcast``.

Each worker receives into the one of its two buffers that its model is not using, then points
its parameters at it (no copy): a broadcast that breaks halfway never touches the weights the
worker acts with.
"""

from __future__ import annotations

import datetime
import pickle
import time

import torch.distributed as dist

from weightsync.errors import PeerDiedError, SyncTimeoutError, WorkerRejectedError
from weightsync.flat import FlatBuffer
from weightsync.transports.base import Update
from weightsync.weights import FlatWeights

_PENDING, _LAYOUT = "pending", "layout"


def _gloo_group(store: dist.Store, rank: int, size: int, host: str, timeout: float):
    options = dist.ProcessGroupGloo._Options()
    options._timeout = datetime.timedelta(seconds=timeout)
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    return dist.ProcessGroupGloo(dist.PrefixStore("weightsync/pg", store), rank, size, options)


class DistributedBroadcast:
    """Trainer side (rank 0): owns the store, broadcasts each update to ranks 1..num_workers.

    Args:
        num_workers: how many workers will join (ranks 1..num_workers).
        host: address the store listens on and the gloo device binds to.
        port: the store's port; 0 picks a free one (read it back from ``port``).
        timeout: seconds for the rendez-vous, each broadcast and the acknowledgements.
    """

    carries_weights = True

    def __init__(
        self, num_workers: int, host: str = "127.0.0.1", port: int = 0, timeout: float = 10.0
    ):
        if num_workers < 1:
            raise ValueError(f"the distributed scheme needs num_workers >= 1, got {num_workers}")
        self.num_workers = num_workers
        self.host = host
        self.timeout = timeout
        self.store = dist.TCPStore(
            host,
            port,
            num_workers + 1,
            is_master=True,
            timeout=datetime.timedelta(seconds=timeout),
            wait_for_workers=False,
        )
        self.port = self.store.port
        self.store.set(_PENDING, "-1")
        self.group = None
        self.staging: FlatBuffer | None = None  # the buffer the trainer's model may live in
        self._given: FlatBuffer | None = None  # where weights passed to send() are staged
        self._published_layout: tuple | None = None  # the (layout, extra keys) workers were told
        self.acked_versions: dict[int, int | None] = dict.fromkeys(range(num_workers))
        self._in_flight: tuple[str, int] | None = None

    def rendezvous(self) -> None:
        """Block until every worker has joined the process group."""
        if self.group is None:
            self.group = _gloo_group(self.store, 0, self.num_workers + 1, self.host, self.timeout)

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer:
        """The trainer may keep its model in the broadcast buffer itself: sends copy nothing."""
        if self.staging is None or self.staging.mismatches(weights):
            self.staging = FlatBuffer.for_weights(weights, shared=False)
        return self.staging

    def _given_buffer(self, weights: FlatWeights) -> FlatBuffer:
        """A buffer of its own for weights passed to ``send()``: never the one the trainer's
        model lives in, which those weights must not overwrite."""
        if self._given is None or self._given.mismatches(weights):
            self._given = FlatBuffer.for_weights(weights, shared=False)
        return self._given

    def _publish_layout(self, buffer: FlatBuffer) -> None:
        """Tell the workers the layout of the buffer broadcast next, when it changed."""
        layout = (buffer.layout, buffer.extra_keys)
        if layout != self._published_layout:
            self.store.set(_LAYOUT, pickle.dumps(layout))
            self._published_layout = layout

    def retired(self, buffer: FlatBuffer) -> bool:
        return False

    def start(
        self,
        model_id: str,
        version: int,
        weights: FlatWeights,
        worker_ids: list[int] | None,
        *,
        source: FlatBuffer | None = None,
    ) -> None:
        if worker_ids is not None and sorted(worker_ids) != list(range(self.num_workers)):
            raise ValueError(
                "a broadcast reaches every worker; worker_ids cannot select a subset "
                f"(got {worker_ids})"
            )
        self.rendezvous()
        bound = source is not None and source is self.staging  # the trainer's model lives in it
        staging = source if bound else self._given_buffer(weights)
        staging.write(weights)  # (a bound model's tensors are already in place: not copied)
        self._publish_layout(staging)
        self.store.set(f"extra/{version}", pickle.dumps(weights.extra))
        self.store.set(_PENDING, str(version))
        try:
            self.group.broadcast(staging.tensor_region, 0).wait()
        except RuntimeError as err:
            raise PeerDiedError(
                f"broadcasting version {version} of model {model_id!r} failed: {err}; a worker "
                "has probably died, which breaks the process group"
            ) from err
        self._in_flight = (model_id, version)

    def finish(self, timeout: float | None = None) -> None:
        """Wait until every worker acknowledged (applied or refused) the update in flight."""
        if self._in_flight is None:
            return
        model_id, version = self._in_flight
        self._in_flight = None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (acks := self.store.add(f"ack/{version}", 0)) < self.num_workers:
            if time.monotonic() > deadline:
                missing = [
                    w
                    for w in range(self.num_workers)
                    if not self.store.check([f"ack/{version}/{w}"])
                ]
                for w in missing:
                    self.acked_versions[w] = None
                raise SyncTimeoutError(
                    f"worker(s) {missing} did not acknowledge version {version} of model "
                    f"{model_id!r} within the timeout ({acks}/{self.num_workers} did)",
                    workers=missing,
                )
            time.sleep(0.0002)
        rejections = {}
        for w in range(self.num_workers):
            answer = self.store.get(f"ack/{version}/{w}").decode()
            if answer == "ok":
                self.acked_versions[w] = version
            else:
                rejections[w] = answer
        self.store.delete_key(f"extra/{version}")
        if rejections:
            raise WorkerRejectedError(model_id, version, rejections)

    def remove_workers(self, worker_ids: list[int]) -> None:
        raise PeerDiedError(
            "a torch.distributed group cannot lose members: restart the job (or the workers) "
            f"instead of removing {worker_ids}",
            workers=list(worker_ids),
        )

    def close(self) -> None:
        if self.group is not None:
            self.store.set(_PENDING, "closed")
            self.group = None


class DistributedReader:
    """Worker side (rank ``worker_id + 1``): joins each broadcast the trainer announces."""

    carries_weights = True

    def __init__(self, worker_id: int, num_workers: int, host: str, port: int, timeout: float):
        self.worker_id = worker_id
        self.num_workers = num_workers
        self.host = host
        self.timeout = timeout
        try:
            self.store = dist.TCPStore(
                host,
                port,
                num_workers + 1,
                is_master=False,
                timeout=datetime.timedelta(seconds=timeout),
            )
        except RuntimeError as err:
            raise PeerDiedError(
                f"worker {worker_id} cannot reach the trainer's store at {host}:{port}: {err}"
            ) from err
        self.group = None
        self.closed = False
        self.buffers: list[FlatBuffer] = []
        self._active = 0  # index of the buffer the model is using
        self._layout_bytes = b""

    def rendezvous(self) -> None:
        if self.group is None:
            self.group = _gloo_group(
                self.store, self.worker_id + 1, self.num_workers + 1, self.host, self.timeout
            )

    def poll(self, timeout: float) -> Update | None:
        self.rendezvous()
        deadline = time.monotonic() + timeout
        while True:
            pending = self._get(_PENDING)
            if pending == b"closed":
                self.closed = True
                return None
            version = int(pending)
            if version >= 0 and not self.store.check([f"ack/{version}/{self.worker_id}"]):
                return self._join_broadcast(version)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.0005)

    def _join_broadcast(self, version: int) -> Update:
        layout_bytes = self._get(_LAYOUT)
        if layout_bytes != self._layout_bytes:
            layout, extra_keys = pickle.loads(layout_bytes)
            self.buffers = [FlatBuffer(layout, extra_keys=extra_keys, shared=False) for _ in "ab"]
            self._layout_bytes = layout_bytes
        target = self.buffers[1 - self._active]
        try:
            self.group.broadcast(target.tensor_region, 0).wait()
        except RuntimeError as err:
            raise PeerDiedError(
                f"worker {self.worker_id}: the broadcast of version {version} broke off "
                f"(trainer gone?): {err}"
            ) from err
        target.write_extra(pickle.loads(self._get(f"extra/{version}")))
        return Update("", version, target, zero_copy=True)

    def acknowledge(self, update: Update) -> None:
        self._active = self.buffers.index(update.buffer)
        self._answer(update.version, "ok")

    def reject(self, update: Update, reason: str) -> None:
        self._answer(update.version, reason)

    def _answer(self, version: int, answer: str) -> None:
        self.store.set(f"ack/{version}/{self.worker_id}", answer)
        self.store.add(f"ack/{version}", 1)

    def _get(self, key: str) -> bytes:
        try:
            return self.store.get(key)
        except RuntimeError as err:  # the store lives in the trainer: it is gone
            raise PeerDiedError(
                f"worker {self.worker_id} lost the trainer's store ({err}); the trainer has "
                "probably exited"
            ) from err

    def close(self) -> None:
        self.group = None
