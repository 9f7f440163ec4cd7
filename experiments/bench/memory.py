"""Memory and bandwidth probes: resident memory of a process, the memcpy floor (all cores)."""

from __future__ import annotations

import ctypes
import os
import statistics
import time

import torch

from weightsync.flat import copy_bytes


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
    """The fastest copy of ``nbytes`` this machine does: the median time of one ``memmove`` on
    one thread, or of the same copy split over every core (weightsync's own parallel copy),
    whichever is faster (pages touched beforehand)."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.zeros(nbytes, dtype=torch.uint8)
    cores = os.cpu_count() or 1

    def single() -> None:
        ctypes.memmove(dst.data_ptr(), src.data_ptr(), nbytes)

    def parallel() -> None:
        copy_bytes(dst, src, threads=cores)

    medians = []
    for copy in (single, parallel) if cores > 1 else (single,):
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter_ns()
            copy()
            times.append((time.perf_counter_ns() - start) / 1e6)
        medians.append(statistics.median(times[1:]))
    return min(medians)
