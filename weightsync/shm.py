"""Shared memory that fails fast, with the fix in its message, and leaves nothing behind.

torch shares memory through ``/dev/shm`` (a ``torch_<pid>_...`` segment per tensor, unlinked
once mapped). When ``/dev/shm`` is too small (a container's default is 64 MiB), torch fails only
after creating the segment, and the segment then stays in ``/dev/shm`` after every process has
exited. :func:`check_room` refuses a request that cannot fit before anything is created;
:func:`shared_zeros` removes the segment of a failed allocation (a race with another program
filling ``/dev/shm`` in between) and says how to enlarge it.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from weightsync.errors import SharedMemoryError

SHM_DIR = "/dev/shm"
_SEGMENT = re.compile(r"<(/torch_[^>/]+)>")  # how torch names the segment in its error


def _space() -> tuple[int, int] | None:
    """``(free, size)`` of ``/dev/shm`` in bytes; None where there is none (not Linux)."""
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


def _too_small(nbytes: int, what: str, free: int | None, size: int | None) -> SharedMemoryError:
    mib = 1 << 20
    has = "" if free is None else f": it has {free / mib:.1f} MiB free of {size / mib:.1f} MiB"
    return SharedMemoryError(
        f"{what} needs {nbytes / mib:.1f} MiB of shared memory, more than {SHM_DIR} offers"
        f"{has}. Enlarge {SHM_DIR} (docker run --shm-size=2g, or as root: mount -o "
        f"remount,size=2G {SHM_DIR}), or need less of it (fewer snapshot buffers with "
        "num_buffers=, a smaller model, fewer models). Nothing was left behind."
    )


def check_room(nbytes: int, what: str) -> None:
    """Raise SharedMemoryError, creating nothing, when ``nbytes`` cannot fit in ``/dev/shm``."""
    space = _space()
    if space is not None and nbytes > space[0]:
        raise _too_small(nbytes, what, *space)


def shared_zeros(nbytes: int, what: str) -> torch.Tensor:
    """A zeroed byte tensor of ``nbytes`` in shared memory; SharedMemoryError (and no segment
    left in ``/dev/shm``) when it does not fit."""
    check_room(nbytes, what)
    try:
        return torch.zeros(nbytes, dtype=torch.uint8).share_memory_()
    except RuntimeError as err:
        found = _SEGMENT.search(str(err))
        if found is None:
            raise
        with contextlib.suppress(OSError):
            os.unlink(SHM_DIR + found.group(1))
        raise _too_small(nbytes, what, *(_space() or (None, None))) from err
