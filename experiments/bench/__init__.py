"""The weight-sync benchmark: trainer stall, freshness, bandwidth and memory of every scheme.

``python run.py experiment=sync_bench`` runs :func:`run` for the configured scheme and
strategy (sweep them with ``-m``); see BENCHMARKS.md for what is measured and how.
"""

from __future__ import annotations

from typing import Any

from experiments.bench.config import BenchConfig

__all__ = ["BenchConfig", "run"]


def run(cfg: Any) -> dict[str, Any]:
    """Run the benchmark (imported on demand, so the config schema can import BenchConfig)."""
    from experiments.bench.runner import run as _run

    return _run(cfg)
