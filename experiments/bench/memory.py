"""Memory and bandwidth probes: resident memory of a process, the memcpy floor."""

from __future__ import annotations

import ctypes
import statistics
import time

import torch


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory of ``pid`` in MB: ``total``, ``anon`` (private) and ``shmem`` (shared)."""
    fields = {"VmRSS": "total", "RssAnon": "anon", "RssShmem": "shmem", "RssFile": "file"}
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in fields:
                out[fields[name]] = int(value.split()[0]) / 1024  # kB -> MB
    return out


def memcpy_floor_ms(nbytes: int, repeats: int = 10) -> float:
    """Median time of one single-threaded ``memcpy`` of ``nbytes`` (pages touched beforehand)."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter_ns()
        ctypes.memmove(dst.data_ptr(), src.data_ptr(), nbytes)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return statistics.median(times[1:])
