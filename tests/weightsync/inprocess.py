"""Helpers for fast protocol tests: a worker that runs in a thread of the test process, over a
real pipe and (for shared-mem) real shared memory. Tests that claim something *across processes*
use the spawned workers of ``workers.py`` instead."""

from __future__ import annotations

import pickle
import threading
import time
from typing import Any

from torch import nn


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
