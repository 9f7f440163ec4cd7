"""The ``logger`` group's loggers, shaped like TorchRL's (``log_scalar``, ``log_hparams``), each
written and read back with its own backend's reader; ``metrics.jsonl`` hands them every number;
and every logger of the group run end to end through ``run.py``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.loggers import CSVLogger, MetricLogger, MLFlowLogger, TensorboardLogger, _backend
from experiments.metrics import MetricsLog
from tests.helpers.logger_stores import read_mlflow_run, read_wandb_offline_run
from tests.helpers.run_py import run_py
from tests.helpers.tensorboard import read_tensorboard_scalars

RECORD = {"iteration": 1, "frames": 1024, "episode_return": 21.5, "sync_latency_ms": None}


class Recorder:
    """A logger that keeps what it was given."""

    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int | None]] = []
        self.closed = False

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self.scalars.append((name, value, step))

    def log_hparams(self, cfg: dict) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_metrics_log_writes_jsonl_and_hands_numbers_to_loggers(tmp_path: Path) -> None:
    recorder = Recorder()
    assert isinstance(recorder, MetricLogger)
    metrics = MetricsLog(tmp_path, [recorder])
    metrics.write(RECORD | {"weights_match": True})
    metrics.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["episode_return"] == 21.5
    assert recorder.scalars == [  # None and bools are not scalars; the step is the frames
        ("iteration", 1, 1024),
        ("frames", 1024, 1024),
        ("episode_return", 21.5, 1024),
    ]
    assert recorder.closed


def test_csv_logger_writes_rows_and_hparams(tmp_path: Path) -> None:
    logger = CSVLogger("csv", str(tmp_path))
    logger.log_hparams({"learner": {"lr": 5e-4}})
    logger.log_scalar("episode_return", 20.0, step=1024)
    logger.log_scalar("episode_return", 30.0, step=2048)
    logger.close()
    with (tmp_path / "csv" / "scalars.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["name"], r["step"], r["value"]) for r in rows] == [
        ("episode_return", "1024", "20.0"),
        ("episode_return", "2048", "30.0"),
    ]
    assert json.loads((tmp_path / "csv" / "hparams.json").read_text())["learner"]["lr"] == 5e-4


def test_tensorboard_logger_writes_an_event_file_tensorboard_reads(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    logger = TensorboardLogger("tensorboard", str(tmp_path))
    logger.log_hparams({"sync": {"timeout": 10.0}})
    for step, value in [(1024, 20.0), (2048, 35.5)]:
        logger.log_scalar("episode_return", value, step=step)
    logger.close()
    assert read_tensorboard_scalars(tmp_path / "tensorboard", "episode_return") == [
        (1024, 20.0),
        (2048, 35.5),
    ]


def test_wandb_logger_offline_writes_a_run_wandb_sync_can_upload(tmp_path: Path) -> None:
    import wandb

    from experiments.loggers import WandbLogger

    logger = WandbLogger("test", save_dir=str(tmp_path), offline=True)
    logger.log_hparams({"learner": {"lr": 5e-4}})
    for step, value in [(1024, 20.0), (2048, 35.5)]:
        logger.log_scalar("episode_return", value, step=step)
    logger.close()
    wandb.teardown()  # W&B's service finishes the run file at process exit, or here
    history, config = read_wandb_offline_run(tmp_path)
    assert [(row["trainer/step"], row["episode_return"]) for row in history] == [
        (1024, 20.0),
        (2048, 35.5),
    ]
    assert config["learner"] == {"lr": 5e-4}


def test_mlflow_logger_to_a_file_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger("weightsync", tracking_uri=uri)
    logger.log_hparams({"learner": {"lr": 5e-4}})
    for step, value in [(1024, 20.0), (2048, 35.5)]:
        logger.log_scalar("episode_return", value, step=step)
    logger.close()
    metrics, params = read_mlflow_run(uri, "weightsync")
    assert metrics == {"episode_return": [(1024, 20.0), (2048, 35.5)]}
    assert params == {"learner.lr": "0.0005"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_every_logger_runs_through_run_py_and_holds_the_runs_metrics(tmp_path: Path) -> None:
    """``logger=[many,wandb,mlflow]`` composes every logger YAML (``many`` is csv + tensorboard)
    into one real run; each backend's store, read back with its own reader, holds every number
    of ``metrics.jsonl`` at its step (frames), and the run's config as hyperparameters. W&B runs
    offline and MLflow into a SQLite file: nothing leaves the machine (tests/conftest.py)."""
    done = run_py(
        "experiment=smoke",
        "logger=[many,wandb,mlflow]",
        "logger.wandb.offline=true",
        "run.total_frames=2048",  # two iterations: two steps per metric
        f"hydra.run.dir={tmp_path}",
        timeout=280,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["frames"] for r in records] == [1024, 2048]
    expected = {
        (name, r["frames"]): value
        for r in records
        for name, value in r.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    names = {name for name, _ in expected}

    with (tmp_path / "csv" / "scalars.csv").open() as file:
        csv_rows = {(r["name"], int(r["step"])): float(r["value"]) for r in csv.DictReader(file)}
    assert csv_rows == expected
    tensorboard = {
        (name, step): value
        for name in names
        for step, value in read_tensorboard_scalars(tmp_path / "tensorboard", name)
    }
    assert tensorboard == pytest.approx(expected, rel=1e-6)  # stored as float32
    history, wandb_config = read_wandb_offline_run(tmp_path)
    wandb_rows = {
        (name, row["trainer/step"]): value
        for row in history
        for name, value in row.items()
        if not name.startswith("_") and name != "trainer/step"
    }
    assert wandb_rows == expected
    metrics, params = read_mlflow_run(f"sqlite:///{tmp_path / 'mlflow.db'}", "weightsync")
    assert {(n, step): v for n, steps in metrics.items() for step, v in steps} == expected

    hparams = json.loads((tmp_path / "csv" / "hparams.json").read_text())
    assert hparams["run"]["total_frames"] == 2048 and "logger" not in hparams
    assert wandb_config["run"]["total_frames"] == 2048
    assert params["run.total_frames"] == "2048"
    assert params["learner.lr"] == str(hparams["learner"]["lr"])


def test_a_missing_backend_names_the_extra_to_install() -> None:
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tensorboard\]"'):
        _backend("no_such_backend_module", "tensorboard")
