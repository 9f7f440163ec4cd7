"""Fixtures shared by the whole suite: spawned processes that are always torn down, and a check
that no test leaves a shared-memory segment behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import torch.multiprocessing as mp

SHM_DIR = "/dev/shm"


def _shm_entries() -> set[str]:
    return set(os.listdir(SHM_DIR)) if os.path.isdir(SHM_DIR) else set()


class Processes:
    """Starts spawned processes and pipes for one test; ``close()`` reclaims all of them."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")
        self.processes: list = []
        self.connections: list = []

    def pipe(self):
        """A duplex pipe whose two ends are closed at teardown."""
        a, b = self.ctx.Pipe()
        self.connections += [a, b]
        return a, b

    def start(self, target, *args, daemon: bool = True):
        """Start ``target(*args)`` in a spawned process."""
        process = self.ctx.Process(target=target, args=args, daemon=daemon)
        process.start()
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        for conn in self.connections:
            conn.close()


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Spawned processes and pipes, killed and closed after the test even when it fails."""
    processes = Processes()
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture(autouse=True)
def no_leaked_shared_memory() -> Iterator[None]:
    """Fail a test that leaves a new entry in /dev/shm behind."""
    before = _shm_entries()
    yield
    leaked = _shm_entries() - before
    if leaked:  # torch's file_descriptor sharing unlinks its entries at once: a second look
        time.sleep(0.5)  # tells those in flight (in any process on the machine) from leaks
        leaked &= _shm_entries()
    assert not leaked, f"shared-memory segments left behind in {SHM_DIR}: {sorted(leaked)}"
