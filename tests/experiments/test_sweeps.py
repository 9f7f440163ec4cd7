"""``python run.py -m`` among Hydra's launchers and sweepers, as a user runs it: a parallel
joblib sweep logging to TensorBoard, a submitit sweep, a sweep with an invalid job, a short
Optuna search, and the exit codes of a single run's configuration errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import yaml

from experiments.job import objective
from tests.helpers.run_py import run_py
from tests.helpers.shm import leaked_since, shm_entries
from tests.helpers.tensorboard import read_tensorboard_scalars


def summaries(sweep_dir: Path) -> dict[str, dict]:
    """Each job directory's name -> its summary, overrides added."""
    found = {}
    for path in sorted(sweep_dir.glob("*/summary.json")):
        overrides = yaml.safe_load((path.parent / ".hydra" / "overrides.yaml").read_text())
        found[path.parent.name] = json.loads(path.read_text()) | {"overrides": overrides}
    return found


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_joblib_sweep_runs_in_parallel_and_logs_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    shm_before = shm_entries()
    done = run_py(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "sync=none,pipe",
        "experiment=smoke",
        "logger=tensorboard",
        f"hydra.sweep.dir={tmp_path}",
        timeout=380,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Joblib.Parallel(n_jobs=2" in output  # the launcher ran the jobs
    assert "cannot find context" not in output
    jobs = summaries(tmp_path)
    assert sorted(jobs) == ["0", "1"]  # short directory names; overrides in .hydra/
    assert {job["sync"] for job in jobs.values()} == {"none", "pipe"}
    for name, job in jobs.items():
        assert job["status"] == "completed", job["error"]
        assert f"sync={job['sync']}" in job["overrides"]
        steps = read_tensorboard_scalars(tmp_path / name / "tensorboard", "episode_return")
        assert [step for step, _ in steps] == list(range(1024, 8192 + 1, 1024))
    with (tmp_path / "comparison.csv").open() as file:
        assert len(list(csv.DictReader(file))) == 2
    assert done.stdout.rstrip().endswith("All 2 jobs completed.")
    assert leaked_since(shm_before) == set()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_submitit_sweep_runs_each_job_as_a_submitted_job(tmp_path: Path) -> None:
    """submitit_local: what submitit_slurm does on a cluster, one job per process, here."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    done = run_py(
        "-m",
        "hydra/launcher=submitit_local",
        "sync=pipe",
        "experiment=smoke",
        f"hydra.sweep.dir={tmp_path}",
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (job,) = summaries(tmp_path).values()
    assert job["status"] == "completed" and job["weights_match"] is True
    assert list((tmp_path / ".submitit").iterdir())  # submitit ran it
    assert done.stdout.rstrip().endswith("All 1 jobs completed.")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_invalid_job_is_recorded_and_the_others_run(tmp_path: Path) -> None:
    done = run_py(
        "-m", "experiment=smoke", "run.num_workers=0,1", f"hydra.sweep.dir={tmp_path}", timeout=280
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    invalid, valid = summaries(tmp_path)["0"], summaries(tmp_path)["1"]
    assert invalid["status"] == "invalid_config" and "run.num_workers=0" in invalid["error"]
    assert valid["status"] == "completed"
    table = (tmp_path / "comparison.md").read_text()
    assert "| 0 | experiment=smoke run.num_workers=0 | - | - | invalid_config |" in table
    last = done.stdout.rstrip().splitlines()[-1]
    assert last.startswith("1 of 2 jobs failed: experiment=smoke run.num_workers=0: invalid_config")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_short_optuna_search_tunes_on_the_returned_objective(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    done = run_py(
        "hparams_search=ppo_optuna",
        "experiment=smoke",
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={tmp_path}",
        timeout=380,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    jobs = summaries(tmp_path)
    assert len(jobs) == 2 and all(job["status"] == "completed" for job in jobs.values())
    for job in jobs.values():  # each trial drew the preset's parameters
        assert {o.split("=")[0] for o in job["overrides"]} >= {"learner.lr", "run.sync_every"}
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    best = max(job["final_return"] for job in jobs.values())
    assert results["best_value"] == pytest.approx(best)
    # the report names the best trial and draws the search beside the comparison
    best_job = next(name for name, job in jobs.items() if job["final_return"] == best)
    assert f"Best trial: job #{best_job}, final_return = " in done.stdout
    assert "Search figures (Optuna, 2 trials): search_history.png" in done.stdout
    for figure in ("comparison.png", "search_history.png", "search_importances.png"):
        assert (tmp_path / figure).read_bytes().startswith(b"\x89PNG"), figure
    assert "constrained_layout not applied" not in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("override", "code", "message"),
    [
        ("sync=bogus", 1, "Could not find 'sync/bogus'"),  # Hydra's own composition error
        ("run.num_wrokers=2", 1, "Key 'num_wrokers' not in 'RunConfig'"),
        ("sync.num_buffers=4", 1, "Key 'num_buffers' not in 'PipeSyncConfig'"),
        ("run.sync_every=0", 2, "Invalid configuration: run.sync_every=0"),  # validate()
    ],
)
def test_a_single_runs_configuration_errors_exit_as_the_readme_says(
    tmp_path: Path, override: str, code: int, message: str
) -> None:
    done = run_py(override, f"hydra.run.dir={tmp_path}", timeout=50)
    assert (done.returncode, message in done.stderr) == (code, True), done.stderr[-2000:]
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_the_training_help_and_config_show_no_benchmark_keys() -> None:
    for flag in ("--help", "--cfg=job"):
        done = run_py(flag, timeout=50)
        assert done.returncode == 0, done.stderr
        assert "bench" not in done.stdout
        assert not any(line.startswith("job:") for line in done.stdout.splitlines())


def test_the_objective_is_the_chosen_summary_field_or_nan() -> None:
    completed = {"status": "completed", "final_return": 480.0, "staleness_mean": None}
    assert objective(completed, "final_return") == 480.0
    assert math.isnan(objective(completed, "staleness_mean"))
    assert math.isnan(objective({"status": "worker_failed", "final_return": 480.0}, "final_return"))
