"""Per-host fan-out for the distributed transport: one network copy per host, shared memory within.

Invariant: each update crosses the network once per host that has workers; every worker still
holds a whole published version or the one before, validates it itself and answers for itself.

Workers tell the trainer their host (:func:`~weightsync.transports.host_ring.host_key`, or an
explicit ``host``) when they join. The trainer then gives each host one writer of a shared
snapshot ring (:mod:`weightsync.transports.host_ring`): on its own host the trainer itself
(workers there take updates with no network hop), on every other host the worker with the lowest
id, its *relay*. Each update then travels as

* the flat buffer, to each relay only: its receiving thread takes it straight into a free buffer
  of its host's ring and publishes it;
* a small ``SNAPSHOT`` header to every other worker: its receiving thread waits for that version
  to be published on its host, then takes it as every shared-mem worker does (zero copy, the
  snapshot mapped read-only).

Every worker keeps its own link to the trainer for everything else, so the guarantees stay per
worker: each validates and answers (applied, busy, or refused with its reason), ``acked_versions``
has one entry per worker, heartbeats reach each one, a dead worker is named. When a relay dies,
the trainer names it and every worker it served (they can no longer be reached); those workers'
next ``receive()`` raises PeerDiedError naming the relay. There is no take-over: relaunch the
host's workers (or go on without them).

Updates cross through host memory (a GPU model is copied to the host once per send).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from weightsync.flat import copy_bytes
from weightsync.transports.base import Update
from weightsync.transports.c10d import Link, as_bytes, header
from weightsync.transports.distributed import (
    DATA,
    DistributedReceiver,
    DistributedSender,
    Msg,
    _TrainerLink,
)
from weightsync.transports.host_ring import RingClient, RingServer, host_key
from weightsync.weights import FlatWeights

TRAINER = -1  # the writer of the trainer's own host's ring


class PerHostSender(DistributedSender):
    """The distributed trainer side, sending each update once per host.

    Args:
        host_id: this trainer's host (default :func:`host_key`); workers reporting the same
            one read the trainer's own ring.
        see :class:`DistributedSender` for the rest (``use_nccl`` is off: rings are host memory).
    """

    def __init__(self, num_workers: int, host: str, port: int, timeout: float, *,
                 host_id: str | None = None, **kwargs: Any) -> None:  # fmt: skip
        kwargs["use_nccl"] = False
        self.host_id = host_id or host_key()
        self.relays: dict[int, list[int]] = {}  # relay -> the workers reading its ring
        self.local: RingServer | None = None  # the ring of the trainer's own host
        self._publishing: Future | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._token = secrets.token_hex(4)
        super().__init__(num_workers, host, port, timeout, **kwargs)

    def rendezvous(self, timeout: float | None = None) -> None:
        """Wait for every worker to join (see :class:`DistributedSender`), then give each host
        its writer and tell every worker its part."""
        try:
            super().rendezvous(timeout)
        finally:
            self._assign_roles()

    def _assign_roles(self) -> None:
        hosts: dict[str, list[int]] = {}
        for w, link in sorted(self.links.items()):
            if link.usable and link.said_hello and w not in self._assigned():
                hosts.setdefault(link.host or f"worker {w}", []).append(w)
        for key, readers in hosts.items():
            writer = TRAINER if key == self.host_id else readers[0]
            address = f"weightsync/{self.port}/{self._token}/{writer}"
            if writer == TRAINER:
                self.local = RingServer(address, readers, timeout=self.join_timeout)
            else:
                self.relays[writer] = readers
            role = as_bytes(json.dumps({"address": address, "readers": readers, "writer": writer}))
            for w in readers:
                try:
                    self.links[w].send(header(Msg.ROLE, length=role.numel()), role)
                except RuntimeError as err:
                    self.links[w]._fail(f"cannot be sent to ({err})")

    @property
    def copies_per_send(self) -> int:
        """Hosts each update is copied to: one per remote host, plus the trainer's own when
        workers read its snapshots."""
        return len(self.relays) + (self.local is not None)

    def _assigned(self) -> set[int]:
        served = [w for readers in self.relays.values() for w in readers]
        return {*served, *(self.local.readers if self.local else [])}

    def start(self, model_id: str, version: int, weights: FlatWeights,
              worker_ids: list[int] | None, *, source: Any = None) -> None:  # fmt: skip
        """Queue the update (the buffer to each relay, a header to everyone else), and publish
        it on the trainer's own host in the background."""
        if worker_ids is not None and sorted(set(worker_ids)) != sorted(self.links):
            raise ValueError(
                "the per-host fan-out sends each update to every worker of a host (they share "
                f"one snapshot ring): worker_ids cannot select a subset (got {worker_ids}); use "
                "topology='flat' to update chosen workers"
            )
        super().start(model_id, version, weights, worker_ids, source=source)
        local = self.local
        if local is not None and any(w in self.links for w in local.readers):
            buffer = self._in_flight[3]
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="weightsync-publish")
            self._publishing = self._executor.submit(
                self._publish_local, local, buffer.data, self._layout[1], version
            )

    def _publish_local(
        self, local: RingServer, data: torch.Tensor, layout: bytes, version: int
    ) -> None:
        ring = local.ring_for(layout)
        index, target = local.free_buffer(time.monotonic() + self.timeout)
        if data.is_cuda:
            target.data.copy_(data)
        else:
            copy_bytes(target.data, data)
        ring.publish(index, version)

    def _send_update(
        self, link: _TrainerLink, version: int, layout: bytes, data: torch.Tensor | None
    ) -> None:
        super()._send_update(link, version, layout, data if link.worker_id in self.relays else None)

    def finish(self, timeout: float | None = None) -> None:
        if self._publishing is not None:
            publishing, self._publishing = self._publishing, None
            publishing.result()  # a failure here is the trainer's own (no room, no buffer)
        super().finish(timeout)

    def link_failed(self, worker_id: int, reason: str) -> None:
        """A dead relay takes the workers it served with it: name them too."""
        for w in self.relays.get(worker_id, []):
            link = self.links.get(w)
            if w != worker_id and link is not None:
                link._fail(f"was served by worker {worker_id}, its host's relay, which {reason}")

    def close(self) -> None:
        super().close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        if self.local is not None:
            self.local.close()


class PerHostReceiver(DistributedReceiver):
    """The distributed worker side under the per-host fan-out: relay of its host's ring (it
    takes each update from the network into the ring), or reader of it.

    Args:
        host_id: this worker's host (default :func:`host_key`).
        timeout: seconds to reach the host's ring writer.
        see :class:`DistributedReceiver` for the rest (``device`` is None: rings are host
            memory).
    """

    def __init__(self, worker_id: int, host: str, port: int, *, host_id: str | None = None,
                 timeout: float, **kwargs: Any) -> None:  # fmt: skip
        self.host_id = host_id or host_key()
        self.timeout = timeout
        self._server: RingServer | None = None  # this worker relays its host's updates
        self._client: RingClient | None = None  # this worker reads another writer's ring
        self._layout_json: bytes | None = None
        self._taking: tuple[Any, int] | None = None  # the ring and reader of the update handed out
        kwargs["device"] = None
        super().__init__(worker_id, host, port, **kwargs)

    def _hello(self) -> dict[str, Any]:
        return {**super()._hello(), "host": self.host_id}

    def _ring(self) -> tuple[Any, int]:
        """The host's ring as this worker reads it, and its reader index."""
        if self._server is not None:
            return self._server.ring, self._server.readers.index(self.worker_id)
        return self._client.ring_for(self._layout_json), self._client.reader

    def _take(
        self, link: Link, kind: Msg, version: int, layout: bytes | None, on_gpu: bool
    ) -> Update | None:
        if kind == Msg.ROLE:  # its JSON came where a layout would
            self._take_role(json.loads(layout.decode()))
            return None
        if layout is not None:
            self._layout_json = layout
        if kind == Msg.UPDATE and self._server is not None:  # the relay: network -> ring
            ring = self._server.ring_for(self._layout_json)
            index, target = self._server.free_buffer(time.monotonic() + self.timeout)
            link.recv(target.data, DATA)
            ring.publish(index, version)
        elif kind == Msg.SNAPSHOT and self._client is not None:  # wait for the host's writer
            self._client.ring_for(self._layout_json)
            self._client.wait_published(version)
        else:
            raise ValueError(
                f"the trainer sent {kind.name} to a worker of the per-host fan-out that was "
                "given no part on its host: build the trainer and every worker with the same "
                "topology"
            )
        return self._acquire(version)

    def _take_role(self, role: dict[str, Any]) -> None:
        writer = role["writer"]
        if writer == self.worker_id:
            self._server = RingServer(role["address"], role["readers"], timeout=self.timeout)
        else:
            name = "the trainer" if writer == TRAINER else f"worker {writer}, this host's relay"
            self._client = RingClient(role["address"], self.worker_id, name, timeout=self.timeout)
            threading.Thread(target=self._watch, name="weightsync-ring-watch", daemon=True).start()

    def _watch(self) -> None:
        """Stop this worker with a clear error once its host's writer is gone (while it is idle
        too: a dead relay's workers get no header that would make them look)."""
        lost = self._client.watch()
        if not self._closed:
            self._stop(lost)

    def _acquire(self, version: int) -> Update | None:
        """Take the newest snapshot for ``poll`` (after the main thread has answered the one
        it took); when nothing newer than ``version`` is there, answer for it at once."""
        ring, reader = self._ring()
        with self._cond:
            while self._taken is not None and self._error is None:
                self._cond.wait()
            newest = max(self._held, self._ready.version if self._ready else -1)
            acquired = ring.acquire(reader, newer_than=newest)
            if acquired is not None:
                new_version, index = acquired
                self._taking = (ring, reader)
                return Update(self.model_id, new_version, ring.buffers[index], zero_copy=True)
            answer = Msg.BUSY if self._ready is not None else Msg.APPLIED
        self._answer(header(answer, version))  # already held: the trainer waits for its answer
        return None

    def acknowledge(self, update: Update) -> None:
        ring, reader = self._taking
        ring.adopt(reader)
        super().acknowledge(update)

    def reject(self, update: Update, reason: str) -> None:
        ring, reader = self._taking
        ring.drop(reader)
        super().reject(update, reason)

    def close(self) -> None:
        super().close()
        for end in (self._server, self._client):
            if end is not None:
                end.close()
