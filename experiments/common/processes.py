"""Spawned processes work under any Hydra launcher.

A process started with the ``spawn`` method re-creates its parent's *global* start method before
it runs anything: ``multiprocessing.spawn.get_preparation_data`` records
``start_method=get_start_method()`` and the child's ``prepare()`` calls
``set_start_method(that, force=True)``. Inside a joblib/loky worker (hydra-joblib-launcher) the
global start method is ``"loky"``, a context that only exists where loky registered it; every
spawned child then dies at start with ``ValueError: cannot find context for 'loky'``, even when
the parent asked for ``get_context("spawn")`` explicitly. :func:`spawnable_start_method` sets
the global start method to ``spawn`` while a job runs when the one in force cannot be
re-created by a child, and restores it afterwards, so the launcher's own process is left as it
was.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Iterator


@contextlib.contextmanager
def spawnable_start_method() -> Iterator[None]:
    """While inside, the global start method is one a spawned child can re-create."""
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None or method in multiprocessing.get_all_start_methods():
        yield
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        yield
    finally:
        multiprocessing.set_start_method(method, force=True)
