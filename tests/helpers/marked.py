"""Processes found by a marker in their environment: every process a test starts (Ray's own
daemons included, which are not children of the test) inherits ``NAME=value``, so the test can
find what is left of them afterwards, and kill it."""

from __future__ import annotations

import contextlib
import os
import signal
import time


def marked(name: str, value: str) -> dict[int, str]:
    """Live processes (not this one, not zombies) whose environment holds ``name=value``:
    pid -> command line."""
    found = {}
    needle = f"{name}={value}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def kill_marked(name: str, value: str, within_s: float = 15.0) -> None:
    """SIGKILL every marked process, again and again until none is left (a daemon may start
    another while the first pass kills its parent), for at most ``within_s`` s."""
    deadline = time.monotonic() + within_s
    while (left := marked(name, value)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
