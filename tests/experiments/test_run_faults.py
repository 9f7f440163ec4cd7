"""``python run.py`` under real faults, in a subprocess with real signals.

* Ctrl-C (SIGINT to the whole process group, as a terminal sends it): a clean stop within a few
  seconds, exit code 130, every metrics line written so far intact, no process left;
* a worker SIGKILLed mid-run: with ``run.on_worker_failure=continue`` the run finishes with the
  survivor; with ``stop`` it stops cleanly with a message naming the worker;
* the trainer SIGKILLed: its workers notice and exit within a few seconds.

After each, ``/dev/shm`` holds nothing new (the autouse fixture of ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.run_py import as_from_a_terminal, exit_code_within

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


def _children(pid: int) -> list[int]:
    """Running (not zombie) processes whose parent is ``pid``, by pid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
            found.append(int(entry))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class Run:
    """``python run.py`` in its own session (process group), outputs in ``out_dir``."""

    def __init__(self, out_dir: Path, *overrides: str):
        self.out_dir = out_dir
        self.log = (out_dir.parent / f"{out_dir.name}.out").open("w+")
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", f"hydra.run.dir={out_dir}", *overrides],
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_from_a_terminal,
        )
        self.workers: list[int] = []

    def wait_for_iterations(self, n: int, within_s: float = 240.0, num_workers: int = 2) -> None:
        """Wait until ``n`` metrics lines are written and all ``num_workers`` worker processes
        are seen; remember them. ``within_s`` is a liveness bound: start-up takes seconds on an
        idle machine, but a minute or more on a loaded one."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"run.py exited early:\n{self.output()}"
            if len(self.workers) < num_workers:  # spawned one by one: look until all are there
                self.workers = [p for p in _children(self.proc.pid) if b"spawn_main" in _cmdline(p)]
            if len(self.lines()) >= n and len(self.workers) >= num_workers:
                return
            time.sleep(0.1)
        raise AssertionError(f"no {n} iterations within {within_s} s:\n{self.output()}")

    def lines(self) -> list[str]:
        path = self.out_dir / "metrics.jsonl"
        return path.read_text().splitlines() if path.exists() else []

    def metrics(self) -> list[dict]:
        """Every metrics line, parsed: one that does not parse fails the test."""
        records = [json.loads(line) for line in self.lines()]
        assert [r["iteration"] for r in records] == list(range(1, len(records) + 1))
        return records

    def summary(self) -> dict:
        return json.loads((self.out_dir / "summary.json").read_text())

    def wait(self, within_s: float) -> int:
        return exit_code_within(self.proc, within_s, self.output)

    def output(self, tail: int | None = 4000) -> str:
        self.log.flush()
        self.log.seek(0)
        text = self.log.read()
        return text if tail is None else text[-tail:]

    def assert_no_process_left(self, within_s: float = 5.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and any(_alive(p) for p in self.workers):
            time.sleep(0.05)
        left = [p for p in self.workers if _alive(p)]
        assert not left, f"worker processes {left} outlived run.py by {within_s} s"

    def cleanup(self) -> None:
        """Whatever happened, leave nothing running."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        for pid in self.workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        self.log.close()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


@pytest.fixture
def runs(tmp_path):
    started: list[Run] = []

    def start(name: str, *overrides: str) -> Run:
        run = Run(tmp_path / name, "experiment=smoke", *overrides)
        started.append(run)
        return run

    yield start
    for run in started:
        run.cleanup()


LONG = "run.total_frames=100000000"  # far more than the test waits for


def test_ctrl_c_stops_the_run_cleanly_within_seconds(runs):
    run = runs("sigint", "sync=shared-mem", LONG)
    run.wait_for_iterations(3)
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    started = time.monotonic()
    code = run.wait(within_s=40.0)
    stopped_in = time.monotonic() - started
    assert code == 130, run.output()
    # a liveness bound (seconds on an idle machine; a loaded 2-core one stalls processes)
    assert stopped_in <= 30.0, f"Ctrl-C took {stopped_in:.1f} s to stop the run"
    run.assert_no_process_left(within_s=10.0)
    records = run.metrics()
    assert len(records) >= 3
    summary = run.summary()
    assert summary["status"] == "interrupted"
    assert len(records) <= summary["num_updates"] <= len(records) + 1  # Ctrl-C may split one
    assert "Traceback" not in run.output(), run.output()


def test_worker_killed_mid_run_with_continue_finishes_with_the_survivor(runs):
    run = runs(
        "continue",
        "sync=pipe",
        "run.on_worker_failure=continue",
        "sync.timeout=5",
        "run.total_frames=49152",  # 48 iterations: the run goes on well after the kill
    )
    run.wait_for_iterations(2)
    victim = run.workers[1]
    os.kill(victim, signal.SIGKILL)
    code = run.wait(within_s=240.0)  # a liveness bound: 46 more iterations
    assert code == 0, run.output()
    records = run.metrics()
    assert records[0]["num_workers"] == 2 and records[-1]["num_workers"] == 1
    summary = run.summary()
    assert summary["status"] == "completed", summary
    assert "going on without worker(s) [1]" in run.output(tail=None), run.output()
    run.assert_no_process_left()


def test_worker_killed_mid_run_with_stop_stops_cleanly_naming_it(runs):
    run = runs("stop", "sync=shared-mem", "run.on_worker_failure=stop", "sync.timeout=5", LONG)
    run.wait_for_iterations(2)
    os.kill(run.workers[1], signal.SIGKILL)
    started = time.monotonic()
    code = run.wait(within_s=60.0)
    # the timeout, plus a clean teardown: a liveness bound on a loaded 2-core machine
    assert time.monotonic() - started <= 5.0 + 30.0
    assert code == 1, run.output()
    summary = run.summary()
    assert summary["status"] == "worker_failed", summary
    assert "worker 1" in summary["error"] or "[1]" in summary["error"], summary
    assert "on_worker_failure=stop" in summary["error"]
    run.metrics()  # every line written before the stop parses
    run.assert_no_process_left()
    assert "Traceback" not in run.output(), run.output()


def test_workers_exit_within_seconds_when_run_py_is_killed(runs):
    run = runs("trainer-kill", "sync=pipe", LONG)
    run.wait_for_iterations(2)
    os.kill(run.proc.pid, signal.SIGKILL)
    run.wait(within_s=10.0)
    run.assert_no_process_left(within_s=30.0)  # a liveness bound (a loaded CI machine)
    run.metrics()  # flushed line by line: everything written before the kill parses
