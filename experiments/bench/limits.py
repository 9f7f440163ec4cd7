"""The limit of the medium, measured in the same run: a raw gloo broadcast of the model's bytes.

For ``sync=distributed`` the benchmark compares freshness with what torch.distributed itself
does on this machine: ``num_workers + 1`` spawned processes in one gloo group (its own store on a
free loopback port), rank 0 broadcasting a buffer of the same size, timed from before the call
on rank 0 until the last rank has it. No weightsync code is involved.
"""

from __future__ import annotations

import datetime
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from weightsync.transports import open_store


def _rank(rank: int, size: int, port: int, nbytes: int, repeats: int, done, out) -> None:
    store = open_store("127.0.0.1", port, is_master=False, timeout=60)
    group = dist.ProcessGroupGloo(store, rank, size, datetime.timedelta(seconds=120))
    buffer = torch.ones(nbytes, dtype=torch.uint8)
    for i in range(repeats + 1):
        group.barrier().wait()
        start = time.perf_counter_ns()
        group.broadcast(buffer, 0).wait()
        done[rank, i] = time.perf_counter_ns()  # each rank: when it holds the bytes
        if rank == 0:
            out[i] = start
    group.barrier().wait()


def gloo_broadcast_ms(nbytes: int, num_workers: int, repeats: int = 10) -> float:
    """Median time for one gloo broadcast of ``nbytes`` from rank 0 to ``num_workers`` ranks."""
    size = num_workers + 1
    store = open_store("127.0.0.1", 0, is_master=True, timeout=60)
    done = torch.zeros((size, repeats + 1), dtype=torch.int64).share_memory_()
    starts = torch.zeros(repeats + 1, dtype=torch.int64).share_memory_()
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_rank, args=(r, size, store.port, nbytes, repeats, done, starts), daemon=True
        )
        for r in range(size)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout=300)
        if any(proc.exitcode != 0 for proc in procs):
            raise RuntimeError("a rank of the raw gloo broadcast failed")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    times = (done.max(dim=0).values - starts).tolist()[1:]  # the first one warms up
    return statistics.median(times) / 1e6
