"""``sync=none``'s transports: nothing moves, but workers still learn when the trainer is done.

A scheme without synchronisation still has a lifecycle: its workers loop until the trainer shuts
down. When the trainer gave the scheme one pipe per worker, :meth:`NullSender.close` says so over
each and :attr:`NullReceiver.closed` notices it (or the trainer's death); without pipes the
transports are pure no-ops. :class:`NullTransport` is the same for TorchRL's legacy,
message-level protocol (what ``NoWeightSyncScheme.create_transport`` returns).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from weightsync.flat import FlatBuffer
from weightsync.transports.base import Update
from weightsync.transports.link import CLOSE_ENVELOPE
from weightsync.transports.workers import ProcessHandle
from weightsync.weights import FlatWeights


class NullSender:
    """Trainer side: every send is accepted and moves nothing."""

    carries_weights = False
    device_direct = False

    def __init__(self, pipes: list[Connection] | None = None):
        self._pipes = list(pipes or [])

    shared_bytes = 0
    copies_per_send = 0

    @property
    def acked_versions(self) -> dict[int, int | None]:
        return {}

    def watch_processes(self, processes: Sequence[ProcessHandle] | None) -> None:
        """Nothing waits on a worker here: there is nothing to watch."""

    def source_buffer(self, weights: FlatWeights) -> FlatBuffer | None:
        return None

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
        pass

    def finish(self, timeout: float | None = None) -> None:
        pass

    def remove_workers(self, worker_ids: list[int]) -> None:
        pass

    def close(self) -> None:
        """Tell each worker given a pipe that the trainer is done."""
        for pipe in self._pipes:
            with contextlib.suppress(OSError, EOFError):  # the worker may be gone already
                pipe.send(CLOSE_ENVELOPE)
            pipe.close()
        self._pipes = []


class NullReceiver:
    """Worker side: nothing ever arrives; :attr:`closed` once the trainer is done or gone."""

    carries_weights = False

    def __init__(self, pipe: Connection | None = None):
        self._pipe = pipe
        self._trainer_gone = False

    @property
    def closed(self) -> bool:
        if self._pipe is not None and not self._trainer_gone:
            try:
                if self._pipe.poll(0):
                    self._pipe.recv()  # the only message a none-scheme trainer sends: close
                    self._trainer_gone = True
            except (EOFError, OSError):
                self._trainer_gone = True
        return self._trainer_gone

    def poll(self, timeout: float) -> Update | None:
        return None

    def acknowledge(self, update: Update) -> None:
        pass

    def reject(self, update: Update, reason: str) -> None:
        pass

    def close(self) -> None:
        pass


class NullTransport:
    """TorchRL's legacy :class:`~weightsync.transports.base.TransportBackend` that moves nothing:
    TorchRL's ``NoWeightSyncScheme.create_transport`` returns one, and code written against it
    calls its methods."""

    def send_weights(self, *args: Any, **kwargs: Any) -> None:
        """Nothing moves (weightsync's ``(model_id, weights)`` or TorchRL's ``(weights)``)."""

    def receive_weights(self, timeout: float | None = 1.0, **kwargs: Any) -> None:
        """Nothing ever arrives."""
        return None

    def check_connection(self) -> bool:
        return True
