"""Ports for tests that must name one before a process binds it (a launcher's master port):
picked below the kernel's ephemeral range, so no socket the system numbers itself can take it
between the check and the bind, and from a range of their own per pytest-xdist worker, so two
tests running in parallel never pick the same one."""

from __future__ import annotations

import os
import random
import socket

_LOWEST = 10_000
_PER_WORKER = 2_000


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def free_port_block(n: int = 3) -> int:
    """A port P such that P..P+n-1 are free on 127.0.0.1 now, in this xdist worker's range."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    stop = _ephemeral_start()
    lo = _LOWEST + (worker * _PER_WORKER) % max(stop - _LOWEST - _PER_WORKER, 1)
    hi = min(lo + _PER_WORKER, stop) - n
    for _ in range(100):
        base = random.randrange(lo, hi)
        held = []
        try:
            for port in range(base, base + n):
                probe = socket.socket()
                held.append(probe)
                probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for probe in held:
                probe.close()
    raise RuntimeError(f"no block of {n} free ports in {lo}..{hi + n}")
