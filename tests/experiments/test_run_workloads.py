"""``python run.py`` on each workload family (Gymnasium, Atari, MuJoCo) with each scheme, the
Atari one under torchrun with ``sync=distributed`` too, and an env that breaks inside a worker.

Budgets are tiny (two updates, one worker): the point is that every piece meets every other,
learning is shown in test_workloads.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers.ports import free_port_block
from tests.helpers.run_py import ROOT, TORCHRUN, launcher_env, run_py

pytest.importorskip("gymnasium", reason="the envs extra: pip install -e '.[envs]'")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FAMILIES = {"gym": "CartPole-v1", "atari": "ALE/Pong-v5", "mujoco": "HalfCheetah-v5"}
SYNCS = ("none", "shared-mem", "pipe")
TINY = (  # one worker, 2 envs x 16 steps, two updates; generous waits for a loaded machine
    "run.num_workers=1", "env.num_envs=2", "run.rollout_steps=16", "run.total_frames=64",
    "learner.minibatches=2", "learner.epochs=1", "run.startup_timeout=300",
    "run.rollout_timeout=300",
)  # fmt: skip
PARAMETERS = {"gym": 9_155, "atari": 1_687_719, "mujoco": 11_085}  # mlp, nature_cnn, mlp+log_std


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One multirun over every family x scheme (state_dict weights); the sweep directory."""
    sweep_dir = tmp_path_factory.mktemp("workloads")
    result = run_py(
        "-m", f"env={','.join(FAMILIES)}", f"sync={','.join(SYNCS)}", "strategy=state_dict",
        *TINY, f"hydra.sweep.dir={sweep_dir}", timeout=840,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return sweep_dir


def _job(sweep_dir: Path, family: str, sync: str) -> dict:
    for path in sweep_dir.iterdir():
        overrides = path / ".hydra" / "overrides.yaml"
        if overrides.exists() and {f"env={family}", f"sync={sync}"} <= set(
            yaml.safe_load(overrides.read_text())
        ):
            return json.loads((path / "summary.json").read_text())
    raise AssertionError(f"no job for env={family} sync={sync} in {sweep_dir}")


@pytest.mark.parametrize("sync", SYNCS)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_workload_family_runs_with_each_scheme(sweep, family: str, sync: str) -> None:
    summary = _job(sweep, family, sync)
    assert summary["status"] == "completed", summary["error"]
    assert summary["frames"] == 64 and summary["num_updates"] == 2
    assert summary["model_parameters"] == PARAMETERS[family]
    assert summary["weights_match"] is (sync != "none"), summary["workers"]


def test_each_workload_family_runs_asynchronously(tmp_path: Path) -> None:
    """run.mode=async with every family: workers that never wait, uint8 frames included."""
    result = run_py(
        "-m", f"env={','.join(FAMILIES)}", "run.mode=async", "sync=pipe", *TINY,
        f"hydra.sweep.dir={tmp_path}", timeout=840,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for family in FAMILIES:
        summary = _job(tmp_path, family, "pipe")
        assert (summary["status"], summary["mode"]) == ("completed", "async"), summary["error"]
        assert summary["num_updates"] == 2 and summary["weights_match"] is True, summary


def test_atari_frames_cross_machines_under_torchrun(tmp_path: Path) -> None:
    """uint8 frames through the rollout links, a CNN's weights through sync=distributed."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [TORCHRUN, "--nproc-per-node=2", "--master-addr=127.0.0.1",
         f"--master-port={free_port_block()}", "run.py", "sync=distributed", "env=atari",
         *TINY[1:], f"hydra.run.dir={out}"],
        cwd=ROOT, env=launcher_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["sync"] == "distributed", summary
    assert summary["weights_match"] is True and summary["frames"] == 64, summary


def test_an_env_that_raises_in_a_worker_stops_the_run_with_its_traceback(tmp_path: Path) -> None:
    result = run_py(
        "env=gym", "env.id=tests.helpers.faulty_env:Faulty-v0", *TINY,
        "run.total_frames=320", f"hydra.run.dir={tmp_path}", timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "worker_failed", summary
    assert "worker 0" in summary["error"]
    assert "the simulator broke at step 40" in summary["error"]
    assert "Traceback" in summary["error"] and "faulty_env.py" in summary["error"]
    records = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(records) == 2  # the rollouts delivered before the env broke were learned from


def test_an_envpool_env_runs_through_run_py(tmp_path: Path) -> None:
    """env.backend=envpool: the workers step EnvPool's C++ copies, rollouts and weights as ever."""
    result = run_py(
        "env=gym", "env.backend=envpool", "sync=shared-mem", *TINY, f"hydra.run.dir={tmp_path}",
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    assert summary["weights_match"] is True and summary["frames"] == 64, summary
