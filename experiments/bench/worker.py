"""The bench worker: receives updates, verifies each in its own model, reports when.

It runs in a spawned process and talks to the trainer through two small shared int64 tensors
(no pipe traffic besides the scheme's own): ``report[w]`` is this worker's row, ``control`` is
written by the trainer. The worker polls ``receive()`` in a loop; each time it applies an update
it reads the version stamps from its own parameters and, if they all equal the version the
receiver reports, writes the wall time (``time.perf_counter_ns``, system-wide on Linux) at which
it could act on them. On request it computes a checksum of all its weights (which also touches
every page it holds, so its resident memory is read as if it had been acting on them).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from experiments.bench.models import build_model, checksum, read_stamps

# Columns of a worker's report row.
PHASE, VERSION, T_NS, BAD, PROBE, CHECKSUM, CHECKSUM_VERSION = range(7)
REPORT_COLUMNS = 7
# Phases.
BUILT, CONNECTED, DONE, FAILED = 1, 2, 3, 4
# Cells of the control tensor.
STOP, PROBE_REQUEST = 0, 1


def run_worker(
    scheme: Any,
    pipe: Any,
    model_name: str,
    worker_id: int,
    report: torch.Tensor,
    control: torch.Tensor,
    threads: int,
    poll_timeout_s: float,
) -> None:
    """Entry point of a bench worker process."""
    row = report[worker_id]
    try:
        torch.set_num_threads(threads)
        model = build_model(model_name, seed=1000 + worker_id)
        model.requires_grad_(False)
        row[PHASE] = BUILT
        scheme.init_on_receiver("policy", model=model, pipe=pipe, worker_id=worker_id)
        scheme.connect()
        receiver = scheme.get_receiver()
        row[PHASE] = CONNECTED
        idle = getattr(scheme, "backend_name", "") == "none"  # receive() returns at once
        while not scheme.closed and not int(control[STOP]):
            if scheme.receive(poll_timeout_s):
                version = receiver.version
                stamps = read_stamps(model)
                now = time.perf_counter_ns()
                if all(s == version for s in stamps):
                    row[T_NS] = now
                    row[VERSION] = version
                else:
                    row[BAD] += 1
            elif idle:
                time.sleep(poll_timeout_s)
            probe = int(control[PROBE_REQUEST])
            if probe > int(row[PROBE]):
                row[CHECKSUM] = checksum(model)
                row[CHECKSUM_VERSION] = receiver.version
                row[PROBE] = probe
        row[PHASE] = DONE
        scheme.shutdown()
    except BaseException:
        row[PHASE] = FAILED
        raise
