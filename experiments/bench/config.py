"""The benchmark's configuration: :class:`BenchConfig` (its settings, node ``bench:``) and the
root schema of ``conf/bench.yaml``, which ``python -m experiments.bench`` composes.

``BenchConfig``'s fields are the one source of the benchmark's defaults: ``conf/bench.yaml`` only
picks the ``sync`` and ``strategy`` options and the sync timeout a large update needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from experiments.common.schemes import StrategyConfig


@dataclass
class BenchConfig:
    """What ``python -m experiments.bench`` measures.

    Every job measures one scheme x strategy (the ``sync`` and ``strategy`` groups, or
    ``schemes``/``strategies`` here when run without the framework) for each model in ``models``
    and each worker count in ``num_workers``.

    Args:
        models: bench model names (see :data:`experiments.bench.models.BENCH_MODELS`):
            ``"1M"``, ``"10M"``, ``"100M"`` (a few large float32 tensors) and ``"small-1000"``
            (~1M parameters in 1000 small tensors).
        num_workers: worker counts to measure.
        warmup: updates sent before measuring (not recorded).
        updates: measured updates per mode (blocking and async).
        fb_batch: batch size of the real forward/backward the trainer runs between
            ``send_async`` and ``wait_async`` in the async mode.
        worker_threads: torch intra-op threads per worker (0: cores // workers, at least 1).
        poll_timeout_s: the ``timeout`` of each ``receive()`` call in the workers' polling loop.
        flatness_updates: extra updates (blocking sends, each verified) sent before reading the
            workers' memory again, to check it stays flat; only for models of at most
            ``flatness_max_mb`` (1000 updates of the 100M model would take minutes).
        floor_repeats: repetitions of the copies that measure the memcpy floor (and, for
            ``distributed``, of the raw gloo broadcast that measures the medium's limit).
        timeout_s: the scheme's timeout, and how long to wait for a worker's report.
        trainer_device, worker_device: where the trainer's and the workers' models live
            (``"cuda"``, ``"cuda:1"``: the CUDA cases, run by ``.ci/gpu-check``).
        schemes, strategies: used only when the config has no ``sync``/``strategy`` node.
        output_dir: where ``results.json`` and ``results.md`` go (default: the Hydra job's
            output directory, or the current one).
    """

    models: list[str] = field(default_factory=lambda: ["1M", "10M", "100M", "small-1000"])
    num_workers: list[int] = field(default_factory=lambda: [1, 2, 4])
    warmup: int = 5
    updates: int = 30
    fb_batch: int = 8
    worker_threads: int = 0
    poll_timeout_s: float = 0.05
    flatness_updates: int = 1000
    flatness_max_mb: float = 50.0
    floor_repeats: int = 10
    timeout_s: float = 60.0
    trainer_device: str = "cpu"
    worker_device: str = "cpu"
    schemes: list[str] = field(default_factory=lambda: ["none", "shared-mem", "pipe"])
    strategies: list[str] = field(default_factory=lambda: ["state_dict"])
    output_dir: str | None = None


@dataclass
class BenchRoot:
    """The root of ``conf/bench.yaml``: the scheme under test and the benchmark's settings."""

    sync: Any = MISSING  # each sync option brings its own schema
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)


ConfigStore.instance().store(name="bench_schema", node=BenchRoot)
