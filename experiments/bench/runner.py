"""The benchmark's entry point: every (model, worker count) case for the configured scheme(s)."""

from __future__ import annotations

import dataclasses
import functools
import traceback
from pathlib import Path
from typing import Any

from experiments.bench import report
from experiments.bench.config import BenchConfig
from experiments.bench.harness import SchemeFactory, measure_case
from experiments.bench.memory import memcpy_floor_ms
from experiments.bench.models import BENCH_MODELS
from experiments.common.schemes import build_scheme
from weightsync import WeightSyncScheme


def bench_config(cfg: Any) -> BenchConfig:
    """The :class:`BenchConfig` of ``cfg``: its ``bench`` node, or ``cfg`` itself."""
    node = getattr(cfg, "bench", cfg)
    if isinstance(node, BenchConfig):
        return node
    from omegaconf import OmegaConf  # a Hydra node

    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    return BenchConfig(**{k: v for k, v in dict(values).items() if k in fields})


def scheme_factories(cfg: Any, bench: BenchConfig) -> list[SchemeFactory]:
    """With a framework config: its one scheme (``sync`` x ``strategy``, built by the
    framework's factory). Without: every backend x strategy listed in ``bench``."""
    if getattr(cfg, "sync", None) is not None and getattr(cfg, "strategy", None) is not None:
        return [functools.partial(build_scheme, cfg)]
    return [
        functools.partial(
            WeightSyncScheme.from_backend, backend, strategy=strategy, timeout=bench.timeout_s
        )
        for backend in bench.schemes
        for strategy in bench.strategies
    ]


def model_nbytes(name: str) -> int:
    width, depth = BENCH_MODELS[name]
    return depth * (width * width + width) * 4


def _memory_needed(nbytes: int, workers: int) -> int:
    # worst case (shared-mem): workers+2 snapshots, trainer model + grads + flat copy, and each
    # worker's own model before it adopts a snapshot
    return nbytes * ((workers + 2) + 3 + workers)


def _available_bytes() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _output_dir(bench: BenchConfig) -> Path:
    if bench.output_dir:
        return Path(bench.output_dir)
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except (ImportError, ValueError):
        return Path(".")


def run(cfg: Any) -> dict[str, Any]:
    """Measure every case, print the table, write ``results.json``/``results.md``; return
    ``{"machine", "results", "markdown", "output_dir"}``."""
    bench = bench_config(cfg)
    machine = report.machine_info()
    floors: dict[str, float] = {}
    results: list[dict[str, Any]] = []
    for make_scheme in scheme_factories(cfg, bench):
        for model in bench.models:
            nbytes = model_nbytes(model)
            if model not in floors:
                floors[model] = memcpy_floor_ms(nbytes, bench.floor_repeats)
            for workers in bench.num_workers:
                needed = _memory_needed(nbytes, workers)
                if needed > _available_bytes():
                    result = {"error": f"skipped: needs ~{needed / 2**30:.1f} GiB"}
                else:
                    try:
                        result = measure_case(make_scheme, model, workers, bench, floors[model])
                    except Exception as err:  # one failed case must not lose the others
                        traceback.print_exc()
                        result = {"error": f"{type(err).__name__}: {err}"}
                if "error" in result:
                    scheme = make_scheme()
                    result |= {
                        "scheme": type(scheme).backend_name,
                        "strategy": scheme.strategy.extract_as,
                        "model": model,
                        "bytes": nbytes,
                        "workers": workers,
                        "floor_ms": floors[model],
                    }
                results.append(result)
                print(report.markdown([result], machine).splitlines()[-1], flush=True)
    machine["loadavg_end"] = report.machine_info()["loadavg"]
    out_dir = _output_dir(bench)
    text = report.write(out_dir, results, machine, dataclasses.asdict(bench))
    print(text, flush=True)
    return {"machine": machine, "results": results, "markdown": text, "output_dir": str(out_dir)}
