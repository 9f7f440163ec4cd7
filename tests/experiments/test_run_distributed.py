"""``run.py`` across processes started by a launcher, as on several machines: real torchrun, and
Slurm's (submitit's) environment simulated by starting one ``python run.py`` per rank with the
variables srun would set. Rank 0 trains; ranks 1 and 2 are its workers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.ports import free_port_block
from tests.helpers.run_py import TORCHRUN, launcher_env

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_torchrun_trains_with_rank_0_and_two_worker_ranks(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [TORCHRUN, "--nproc-per-node=3", "--master-addr=127.0.0.1",
         f"--master-port={free_port_block()}", "run.py", "sync=distributed", "experiment=smoke",
         "run.total_frames=30720", f"hydra.run.dir={out}"],
        cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["status"] == "completed" and summary["sync"] == "distributed", summary
    assert summary["num_workers"] == 2 and summary["weights_match"] is True, summary
    assert summary["final_return"] > summary["initial_return"] + 10, summary  # it learns
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["num_workers"] == 2 for r in records)
    # Rollouts are tagged with their version, and updates reach the workers: staleness stays
    # about 1 (it grows with every update under sync=none). A worker that acts before its
    # receiving thread holds the newest version (a loaded machine) adds one now and then.
    assert max(r["staleness"] for r in records) <= 3.0, [r["staleness"] for r in records]
    assert len(records) > 6


def test_torchrun_async_with_vtrace_ends_with_the_final_weights_on_every_rank(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [TORCHRUN, "--nproc-per-node=3", "--master-addr=127.0.0.1",
         f"--master-port={free_port_block()}", "run.py", "sync=distributed", "experiment=smoke",
         "run.mode=async", "learner.correction=vtrace", f"hydra.run.dir={out}"],
        cwd=REPO, env=launcher_env(), capture_output=True, text=True, timeout=200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = _summary(out)
    assert (summary["status"], summary["mode"], summary["num_updates"]) == ("completed", "async", 8)
    assert summary["weights_match"] is True, summary
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["staleness_min"] <= r["staleness_max"] and r["importance_ratio_mean"] > 0
               for r in records)  # fmt: skip


class SlurmRanks:
    """Three ``python run.py`` processes with the environment srun gives a 3-task job."""

    def __init__(self, tmp: Path, *overrides: str):
        port = free_port_block()
        self.out = [tmp / f"rank{r}" for r in range(3)]
        self.logs = [(tmp / f"rank{r}.log").open("w+") for r in range(3)]
        self.procs = []
        for rank in range(3):
            env = {**launcher_env(), "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
                   "SLURM_NTASKS": "3", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "4242",
                   "SLURM_JOB_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}  # fmt: skip
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "run.py",
                        "sync=distributed",
                        "experiment=smoke",
                        f"hydra.run.dir={self.out[rank]}",
                        *overrides,
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=self.logs[rank],
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def wait_for_iterations(self, n: int, within_s: float = 120.0) -> None:
        metrics = self.out[0] / "metrics.jsonl"
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert self.procs[0].poll() is None, self.output(0)
            if metrics.exists() and len(metrics.read_text().splitlines()) >= n:
                return
            time.sleep(0.1)
        raise AssertionError(f"no {n} iterations within {within_s} s:\n{self.output(0)}")

    def wait(self, rank: int, within_s: float) -> int:
        try:
            return self.procs[rank].wait(within_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"rank {rank} still running after {within_s} s") from None

    def output(self, rank: int, tail: int | None = 4000) -> str:
        self.logs[rank].flush()
        self.logs[rank].seek(0)
        text = self.logs[rank].read()
        return text if tail is None else text[-tail:]

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in self.logs:
            log.close()


@pytest.fixture
def slurm(tmp_path):
    started = []

    def start(*overrides: str) -> SlurmRanks:
        started.append(SlurmRanks(tmp_path, *overrides))
        return started[-1]

    yield start
    for ranks in started:
        ranks.cleanup()


def test_a_killed_worker_rank_is_named_and_the_run_goes_on_with_the_survivor(slurm):
    ranks = slurm("run.on_worker_failure=continue", "sync.timeout=5", "run.total_frames=49152")
    ranks.wait_for_iterations(2)
    os.kill(ranks.procs[2].pid, signal.SIGKILL)  # rank 2 = worker 1
    assert ranks.wait(0, within_s=150) == 0, ranks.output(0)
    assert ranks.wait(1, within_s=30) == 0, ranks.output(1)  # liveness: it ends with rank 0
    summary = _summary(ranks.out[0])
    assert summary["status"] == "completed", summary
    assert "going on without worker(s) [1]: worker 1 (rank 2)" in ranks.output(0, tail=None)
    records = [json.loads(x) for x in (ranks.out[0] / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["num_workers"] == 2 and records[-1]["num_workers"] == 1
    assert summary["weights_match"] is True and list(summary["workers"]) == ["0"], summary


def test_every_worker_rank_exits_when_rank_0_is_killed(slurm):
    timeout = 5.0
    ranks = slurm(f"sync.timeout={timeout}", "run.total_frames=100000000")
    ranks.wait_for_iterations(2)
    os.kill(ranks.procs[0].pid, signal.SIGKILL)
    for rank in (1, 2):  # a liveness bound: a dead link is seen at once on an idle machine
        assert ranks.wait(rank, within_s=timeout + 30) == 0, ranks.output(rank)
        assert "Traceback" not in ranks.output(rank), ranks.output(rank)


def test_an_env_that_raises_in_a_worker_rank_stops_the_run_with_its_traceback(slurm):
    """A worker rank whose env raises sends its traceback to rank 0 in place of its rollout, as a
    spawned worker does; it is not taken for a trainer gone (the env raises a RuntimeError, as
    a broken link does)."""
    ranks = slurm(
        "env=gym", "env.id=tests.helpers.faulty_env:Faulty-v0", "env.num_envs=2",
        "run.rollout_steps=16", "run.total_frames=640", "learner.minibatches=2",
        "learner.epochs=1",
    )  # fmt: skip
    assert ranks.wait(0, within_s=150) == 1, ranks.output(0)
    summary = _summary(ranks.out[0])
    assert summary["status"] == "worker_failed", summary
    assert re.search(r"worker \d \(rank \d\) failed", summary["error"]), summary["error"]
    assert "the simulator broke at step 40" in summary["error"]
    assert "Traceback" in summary["error"] and "faulty_env.py" in summary["error"]
    for rank in (1, 2):  # a liveness bound: each ends once its env broke or rank 0 is gone
        ranks.wait(rank, within_s=60)
