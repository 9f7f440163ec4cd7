"""Fixtures of the TorchRL interop suite. Each test module skips itself where torchrl is not
installed (``pip install -e ".[torchrl]"``); this file imports nothing from it. The suite-wide
``/dev/shm`` leak check (``tests/conftest.py``) covers these tests too."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """A collector's multiprocessing queues and locks (named semaphores under spawn) are
    unlinked when they are garbage-collected; collect before the leak check looks."""
    yield
    gc.collect()
