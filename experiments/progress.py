"""Where a run is: a progress bar with ETA on an interactive terminal, plain log lines elsewhere.

Every ``log_every`` iterations (and the last) a progress line is logged, with its ETA: that is all
a batch job (Slurm, a joblib worker, CI) shows, and what ``run.log`` keeps. When standard error is
a terminal a one-line bar is also redrawn in place after every iteration, cleared before each log
line so the two never tangle; not in a launcher's worker process (hydra-joblib-launcher), whose
parallel jobs share the terminal and would draw over each other. No dependency: the bar is a
dozen characters of text.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("experiments.train")

BAR_WIDTH = 24


class Progress:
    """Reports iteration ``i`` of ``total``; ``stream`` (default stderr) decides bar or not."""

    def __init__(self, total: int, log_every: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.log_every = log_every
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() and multiprocessing.parent_process() is None
        self.started = time.perf_counter()
        self._drawn = False

    def start(self) -> None:
        """Start the clock the ETA is measured by (after the workers started)."""
        self.started = time.perf_counter()

    def update(self, record: dict[str, Any]) -> None:
        """Report the iteration that ``record`` (a metrics line) describes."""
        iteration = record["iteration"]
        eta = self.eta(iteration)
        if iteration % self.log_every == 0 or iteration == self.total:
            self._clear()
            log.info("%s | ETA %s", _line(record, self.total), eta)
        if self.interactive:
            done = round(BAR_WIDTH * iteration / self.total)
            bar = "#" * done + "." * (BAR_WIDTH - done)
            self.stream.write(
                f"\r[{bar}] {iteration}/{self.total} | return {_number(record['episode_return'])}"
                f" | ETA {eta}\033[K"
            )
            self.stream.flush()
            self._drawn = True

    def eta(self, iteration: int) -> str:
        """Time left at the pace so far, as ``m:ss`` (or ``h:mm:ss``)."""
        elapsed = time.perf_counter() - self.started
        seconds = round(elapsed / iteration * (self.total - iteration)) if iteration else 0
        hours, rest = divmod(seconds, 3600)
        return (
            f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
            if hours
            else f"{rest // 60}:{rest % 60:02d}"
        )

    def close(self) -> None:
        """End the bar's line, so what follows starts on a line of its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _line(record: dict[str, Any], total: int) -> str:
    """One progress line: where the run is and what it costs."""
    latency = record["sync_latency_ms"]
    return (
        f"iter {record['iteration']}/{total} | frames {record['frames']} | return "
        f"{_number(record['episode_return'])} | loss {record['loss']:.3f} | "
        f"{record['frames_per_s']:.0f} frames/s | sync "
        f"{'-' if latency is None else f'{latency:.2f} ms'} | staleness {record['staleness']:.1f}"
    )
