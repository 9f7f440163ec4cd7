"""Helpers for fast protocol tests, both ends in the test process over a real pipe and (for
shared-mem) real shared memory: a worker in a thread, and a connected trainer/worker pair. Tests
that claim something *across processes* use the spawned workers of ``workers.py`` instead."""

from __future__ import annotations

import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch.multiprocessing as mp
from torch import nn

from weightsync import WeightSyncScheme


class CountingConnection:
    """A real pipe end that records every message sent through it (a spy, not a stand-in)."""

    def __init__(self, connection: Any):
        self._connection = connection
        self.sent: list[Any] = []

    def send(self, obj: Any) -> None:
        self.sent.append(obj)
        self._connection.send(obj)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class ThreadWorker:
    """A worker in a thread: its own unpickled copy of ``scheme`` (as a spawned worker would get),
    ``init_on_receiver`` + ``connect`` (if ``connect``), then ``receive`` until stopped or closed.
    An exception in the thread is kept in ``error``."""

    def __init__(
        self,
        scheme: Any,
        model: nn.Module,
        pipe: Any,
        model_id: str = "policy",
        *,
        connect: bool = True,
        loop: bool = True,
    ):
        self.scheme = pickle.loads(pickle.dumps(scheme))
        self.model = model
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._args = (model_id, pipe, connect, loop)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        model_id, pipe, connect, loop = self._args
        try:
            self.scheme.init_on_receiver(model_id, model=self.model, pipe=pipe)
            if connect:
                self.scheme.connect()
            self.connected.set()
            while loop and not self._stop.is_set() and not self.scheme.closed:
                self.scheme.receive(0.005)
        except BaseException as err:  # kept for the test to assert on
            self.error = err
            self.connected.set()

    @property
    def version(self) -> int:
        return self.scheme.get_receiver().version

    def wait_for(self, version: int, timeout: float = 10.0) -> int:
        """Wait until the worker holds ``version`` (or later); return what it holds."""
        deadline = time.monotonic() + timeout
        while self.version < version and time.monotonic() < deadline and self.error is None:
            time.sleep(0.002)
        return self.version

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive(), "worker thread did not stop"
        self.scheme.shutdown()


@dataclass
class ConnectedPair:
    """A trainer scheme and a worker scheme (one worker, both in this process) over a real pipe,
    connected: the worker holds the trainer's initial weights."""

    trainer: Any
    worker: Any
    trainer_end: Any
    worker_end: Any

    def close(self) -> None:
        self.trainer.shutdown()
        self.worker.shutdown()
        self.trainer_end.close()
        self.worker_end.close()


def connected_pair(
    backend: str,
    trainer_model: Any = None,
    worker_model: Any = None,
    *,
    model_id: str = "policy",
    trainer_context: Any = None,
    worker_context: Any = None,
    timeout: float = 5.0,
    **scheme_kwargs: Any,
) -> ConnectedPair:
    """Build a ``backend`` scheme on the trainer (``init_on_sender``), pickle it to the worker
    as a spawned worker would get it (``init_on_receiver``), and run both ``connect()`` calls."""
    trainer_end, worker_end = mp.Pipe()
    trainer = WeightSyncScheme.from_backend(backend, timeout=timeout, **scheme_kwargs)
    sender_kwargs = {} if trainer_model is None else {"model": trainer_model}
    trainer.init_on_sender(model_id, trainer_context, pipes=[trainer_end], **sender_kwargs)
    worker = pickle.loads(pickle.dumps(trainer))
    receiver_kwargs = {} if worker_model is None else {"model": worker_model}
    worker.init_on_receiver(model_id, worker_context, pipe=worker_end, **receiver_kwargs)
    connecting = threading.Thread(target=worker.connect)
    connecting.start()
    trainer.connect()
    connecting.join(timeout)
    assert not connecting.is_alive(), "the worker's connect() did not return"
    return ConnectedPair(trainer, worker, trainer_end, worker_end)
