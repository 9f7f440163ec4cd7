"""Where a run's numbers go: ``metrics.jsonl`` (one line per iteration) and ``summary.json``.

Every line is flushed when written, so a run that is interrupted or crashes keeps all it logged.
The loggers of the ``logger`` group (``experiments/loggers.py``) get every numeric field of each
line as a scalar, stepped by the frames collected so far.
Names carry their units (``sync_latency_ms``, ``frames_per_s``, ``bytes_moved``); a value that
does not exist for an iteration (no episode ended, no sync happened) is ``null``, never a guess.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiments.loggers import MetricLogger

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class MetricsLog:
    """Appends one JSON object per call to ``<out_dir>/metrics.jsonl`` and hands its numbers to
    ``loggers``; ``close()`` closes them too (those that have a ``close``)."""

    def __init__(self, out_dir: Path, loggers: Sequence[MetricLogger] = ()) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / METRICS_FILE
        self.loggers = list(loggers)
        self._file = self.path.open("w")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record.get("frames")
        for name, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                for logger in self.loggers:
                    logger.log_scalar(name, value, step=step)

    def close(self) -> None:
        self._file.close()
        for logger in self.loggers:
            close = getattr(logger, "close", None)
            if close is not None:
                close()


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Write ``summary.json`` (indented, for people and scripts alike); return its path."""
    path = out_dir / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def mean(values: Sequence[float]) -> float | None:
    """The mean, or None for no values."""
    return sum(values) / len(values) if values else None


def rounded(value: float | None, digits: int = 3) -> float | None:
    """``value`` rounded for the logs (None stays None)."""
    return None if value is None else round(value, digits)
