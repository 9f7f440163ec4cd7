"""Transports and threads still open when the interpreter exits are closed by an exit hook, before
``multiprocessing`` joins the children and before the interpreter finalises.

* A trainer that returns or raises without ``shutdown()`` keeps its pipes open until the
  interpreter is gone, but ``multiprocessing`` first joins every non-daemon child at exit: workers
  waiting on those pipes, and the trainer waiting on its workers, would wait for each other
  forever. Every scheme initialised on the sender registers its transport here; at exit, each one
  still open is closed (workers see ``closed``, as after ``shutdown()``) before the join.
* A background receiving thread (the distributed transport's, a TorchRL worker's) registers
  its owner: the thread must have ended before the interpreter finalises, since a daemon thread
  that is still unwinding, or wakes from a torch call, then aborts the whole process.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.util  # noqa: F401  (registers its exit hook first, so ours runs before it)
import weakref
from typing import Protocol

log = logging.getLogger(__name__)


class Closable(Protocol):
    def close(self) -> None: ...


_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_hooked = False


def close_at_exit(transport: Closable) -> None:
    """Close ``transport`` when the interpreter exits, unless :func:`closed` said it was."""
    global _hooked
    if not _hooked:
        # atexit runs its hooks last-registered first: multiprocessing's join of the children was
        # registered when multiprocessing.util was imported (above), so this runs before it.
        atexit.register(_close_open_transports)
        _hooked = True
    _open.add(transport)


def closed(transport: Closable) -> None:
    """``transport`` was closed by its owner: nothing to do at exit."""
    _open.discard(transport)


def _close_open_transports() -> None:
    for transport in list(_open):
        log.debug("closing %r at exit: its scheme was not shut down", transport)
        with contextlib.suppress(Exception):  # exiting: one failure must not stop the others
            transport.close()
    _open.clear()
