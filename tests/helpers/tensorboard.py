"""Reading TensorBoard event files back, as TensorBoard itself reads them."""

from __future__ import annotations

from pathlib import Path

import pytest


def read_tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` in the event files under ``log_dir``, as TensorBoard reads."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    ).EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]
