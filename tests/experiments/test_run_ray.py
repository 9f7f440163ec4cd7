"""``python run.py sync=ray`` as a user runs it, in a subprocess: workers as Ray actors on a local
Ray instance the run starts (or on one it joins), weights that match at the end, and nothing of
Ray left running afterwards, whether the run completed, lost a worker or was interrupted with
Ctrl-C; a Ray instance that was running before is left running. Also a sweep through Hydra's
Ray launcher. Every process a run starts (Ray's included) carries a marker in its environment,
which is how the tests find what is left."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers.marked import kill_marked
from tests.helpers.marked import marked as find_marked
from tests.helpers.run_py import as_from_a_terminal, exit_code_within

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
MARKER = "WEIGHTSYNC_TEST_RUN"
# No token: ~/.ray/auth_token is shared by every Ray instance of this user on the machine.
NO_TOKEN = {"RAY_AUTH_MODE": "disabled"}
# Ray and each actor are processes that import torch: generous bounds for a loaded machine.
SLOW = ("run.startup_timeout=300", "sync.timeout=120")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def marked(marker: str) -> dict[int, str]:
    """Live processes a run with ``marker`` started: pid -> command line."""
    return find_marked(MARKER, marker)


class MarkedRun:
    """``python run.py`` in its own session; everything it starts carries a fresh marker."""

    def __init__(self, tmp_path: Path, *args: str):
        self.marker = uuid.uuid4().hex
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.out_dir = tmp_path / "run"
        self.log = (tmp_path / "run.out").open("w+")
        environ = {**os.environ, MARKER: self.marker, "PYTHONPATH": str(REPO), **NO_TOKEN}
        environ.pop("RAY_ADDRESS", None)
        self.proc = subprocess.Popen(
            [sys.executable, "run.py", f"hydra.run.dir={self.out_dir}", *SLOW, *args],
            cwd=REPO, env=environ, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=as_from_a_terminal,
        )  # fmt: skip

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-6000:]

    def wait(self, within_s: float = 360.0) -> int:
        return exit_code_within(self.proc, within_s, self.output)

    def summary(self) -> dict:
        return json.loads((self.out_dir / "summary.json").read_text())

    def lines(self) -> int:
        path = self.out_dir / "metrics.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def wait_for_iterations(self, n: int, within_s: float = 300.0) -> None:
        deadline = time.monotonic() + within_s
        while self.lines() < n:
            assert self.proc.poll() is None, f"run.py exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {n} iterations:\n{self.output()}"
            time.sleep(0.2)

    def assert_nothing_left(self, within_s: float = 15.0) -> None:
        deadline = time.monotonic() + within_s
        while marked(self.marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = marked(self.marker)
        assert not left, f"processes outlived run.py by {within_s} s: {left}"

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        kill_marked(MARKER, self.marker)
        self.log.close()


@pytest.fixture
def start_run(tmp_path: Path):
    started: list[MarkedRun] = []

    def start(*args: str) -> MarkedRun:
        run = MarkedRun(tmp_path / str(len(started)), *args)
        started.append(run)
        return run

    yield start
    for run in started:
        run.cleanup()


def test_a_ray_run_matches_the_weights_and_leaves_no_ray_process(start_run) -> None:
    """Asynchronous, with V-trace (the launcher sweep below runs sync=ray synchronously)."""
    run = start_run("sync=ray", "experiment=smoke", "run.mode=async", "learner.correction=vtrace")
    assert run.wait() == 0, run.output()
    summary = run.summary()
    assert (summary["status"], summary["sync"], summary["mode"], summary["weights_match"]) == (
        "completed", "ray", "async", True,
    ), run.output()  # fmt: skip
    assert summary["trainer_version"] == max(w["version"] for w in summary["workers"].values())
    run.assert_nothing_left()


def test_a_dead_actor_stops_the_run_naming_it_and_leaves_no_ray_process(start_run) -> None:
    run = start_run("sync=ray", "experiment=smoke", "run.total_frames=100000000")
    run.wait_for_iterations(2)
    actor = next(pid for pid, cmd in marked(run.marker).items() if "RayWorker" in cmd)
    os.kill(actor, signal.SIGKILL)
    run.wait()
    summary = run.summary()
    assert summary["status"] == "worker_failed", run.output()
    assert "Ray actor" in summary["error"], summary["error"]
    run.assert_nothing_left()


def test_ctrl_c_stops_a_ray_run_and_leaves_no_ray_process(start_run) -> None:
    run = start_run("sync=ray", "experiment=smoke", "run.total_frames=100000000")
    run.wait_for_iterations(2)
    os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert run.wait(within_s=120) == 130, run.output()
    assert run.summary()["status"] == "interrupted"
    run.assert_nothing_left()


def test_a_run_joins_a_running_ray_instance_and_leaves_it_running(start_run, tmp_path) -> None:
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker, **NO_TOKEN}
    env.pop("RAY_ADDRESS", None)
    address = f"127.0.0.1:{free_port()}"
    head = subprocess.run(
        [str(Path(sys.executable).with_name("ray")), "start", "--head",
         "--node-ip-address=127.0.0.1", f"--port={address.split(':')[1]}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        run = start_run("sync=ray", f"sync.address={address}", "experiment=smoke")
        assert run.wait() == 0, run.output()
        assert run.summary()["weights_match"] is True
        run.assert_nothing_left()  # its actors are gone ...
        left = marked(marker)
        assert any("gcs_server" in cmd for cmd in left.values()), left  # ... the instance is not
    finally:
        kill_marked(MARKER, marker)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_sweep_through_the_ray_launcher_compares_ray_and_pipe(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    marker = uuid.uuid4().hex
    env = {**os.environ, MARKER: marker, "PYTHONPATH": str(REPO), **NO_TOKEN}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run(
            [sys.executable, "run.py", "-m", "hydra/launcher=ray",
             "hydra.launcher.ray.init.address=local", f"hydra.sweep.dir={tmp_path}",
             "sync=ray,pipe", "experiment=smoke", *SLOW],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        comparison = (tmp_path / "comparison.md").read_text()
        assert "ray" in comparison and "pipe" in comparison, comparison
        for job in ("0", "1"):
            assert json.loads((tmp_path / job / "summary.json").read_text())["weights_match"]
    finally:
        kill_marked(MARKER, marker)
