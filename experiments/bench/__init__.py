"""The weight-sync benchmark: trainer stall, freshness, bandwidth and memory of every scheme.

``python -m experiments.bench`` (``conf/bench.yaml``) runs :func:`run` for the configured scheme
and strategy (sweep them with ``-m``); see BENCHMARKS.md for what is measured and how.
"""

from experiments.bench.config import BenchConfig
from experiments.bench.runner import run

__all__ = ["BenchConfig", "run"]
