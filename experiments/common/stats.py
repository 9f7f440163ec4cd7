"""The two measures both programs report: a model's size in bytes and a percentile.

The training run (``summary.json``) and the benchmark (``BENCHMARKS.md``) share these, so a
"p95" or a "model MB" means the same thing in both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


def model_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``model``: what one full copy of it moves."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between the closest ranks
    (numpy's default), or None for no values. ``q=50`` is the median."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
