"""Fixtures shared by the whole suite: spawned processes that are always torn down, and a check
that no test leaves a shared-memory segment behind (see tests/helpers/shm.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.processes import Processes
from tests.helpers.shm import no_leaked_shared_memory as _no_leaked_shared_memory


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
    """Fail a test that leaves a new entry of its own in /dev/shm behind."""
    with _no_leaked_shared_memory():
        yield
