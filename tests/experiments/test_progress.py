"""Progress: a bar with ETA redrawn in place on a terminal; plain log lines anywhere else."""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.progress import Progress

ROOT = Path(__file__).resolve().parents[2]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(iteration: int) -> dict:
    return {
        "iteration": iteration,
        "frames": 1024 * iteration,
        "episode_return": 20.0 + iteration,
        "loss": 0.5,
        "frames_per_s": 5000.0,
        "sync_latency_ms": 0.25,
        "staleness": 1.0,
    }


def run(progress: Progress, total: int) -> None:
    progress.start()
    for i in range(1, total + 1):
        progress.update(record(i))
    progress.close()


def test_no_terminal_gets_log_lines_with_eta_and_no_bar(caplog: pytest.LogCaptureFixture) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="experiments.train"):
        run(Progress(total=4, log_every=2, stream=stream), 4)
    assert stream.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("iter 2/4 | frames 2048 | return 22.0")
    assert all("| ETA 0:0" in line for line in lines)


def test_a_terminal_gets_a_bar_redrawn_in_place(caplog: pytest.LogCaptureFixture) -> None:
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="experiments.train"):
        run(Progress(total=4, log_every=10, stream=terminal), 4)
    text = terminal.getvalue()
    assert text.count("\r[") == 4 and text.endswith("\n")
    assert "[" + "#" * 24 + "] 4/4 | return 24.0 | ETA 0:00" in text
    assert len(caplog.records) == 1  # the last iteration is logged too, for run.log


def test_eta_formats_hours() -> None:
    progress = Progress(total=3, log_every=1, stream=io.StringIO())
    progress.started -= 3600  # one iteration took an hour
    assert progress.eta(1).startswith("2:00:0")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_run_py_draws_the_bar_on_a_terminal_and_not_into_a_pipe(tmp_path) -> None:
    command = [sys.executable, "run.py", "experiment=smoke", "run.total_frames=4096"]
    master, terminal = pty.openpty()
    process = subprocess.Popen(
        [*command, f"hydra.run.dir={tmp_path / 'tty'}"], cwd=ROOT, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    seen = b""
    try:
        while select.select([master], [], [], 120)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            if not chunk:
                break
            seen += chunk
        assert process.wait(timeout=30) == 0, seen.decode()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    assert "\r[" + "#" * 24 + "] 4/4" in seen.decode()

    piped = subprocess.run(
        [*command, f"hydra.run.dir={tmp_path / 'pipe'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert piped.returncode == 0 and "\r" not in piped.stdout + piped.stderr
    assert "iter 4/4 |" in piped.stdout + piped.stderr
