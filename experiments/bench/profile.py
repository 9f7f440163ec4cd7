"""Where one shared-mem update goes, trainer side and worker side, for a few-tensor and a
1000-tensor model of the same bytes: ``python -m experiments.bench.profile [updates]``.

Both ends live in this process on in-process pipes (the worker is only driven, not spawned), so
``send()`` and ``receive()`` are timed and profiled separately with ``cProfile``; the numbers
include the profiler's overhead. BENCHMARKS.md quotes them.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import threading
import time

import torch
import torch.multiprocessing as mp

from experiments.bench.models import build_model
from weightsync import WeightSyncScheme


def _median_ms(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2] * 1e3


def profile_model(name: str, updates: int) -> str:
    """Profile ``updates`` shared-mem updates of bench model ``name``; return the report."""
    trainer_end, worker_end = mp.Pipe()
    trainer = WeightSyncScheme.from_backend("shared-mem", timeout=10)
    worker = WeightSyncScheme.from_backend("shared-mem", timeout=10)
    trainer.init_on_sender("policy", model=build_model(name, 0), pipes=[trainer_end])
    worker.init_on_receiver("policy", model=build_model(name, 1), pipe=worker_end)
    connecting = threading.Thread(target=worker.connect)
    connecting.start()
    trainer.connect()
    connecting.join()
    timings: dict[str, list[float]] = {"send": [], "receive": []}
    profiles = {"send": cProfile.Profile(), "receive": cProfile.Profile()}
    steps = {"send": trainer.send, "receive": lambda: worker.receive(1.0)}
    for _ in range(updates):
        for side in ("send", "receive"):
            start = time.perf_counter()
            profiles[side].enable()
            steps[side]()
            profiles[side].disable()
            timings[side].append(time.perf_counter() - start)
    trainer.shutdown()
    worker.shutdown()
    lines = [
        f"{name}: trainer send {_median_ms(timings['send']):.3f} ms, worker receive "
        f"{_median_ms(timings['receive']):.3f} ms (median of {updates}, profiler on)"
    ]
    for side, profile in profiles.items():
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(8)
        lines += [f"--- {name} {side}: top functions by own time", out.getvalue()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    updates = int(argv[0]) if argv else 200
    for name in ("1M", "small-1000"):
        print(profile_model(name, updates))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
