"""The ``logger`` group's loggers, shaped like TorchRL's (``log_scalar``, ``log_hparams``), each
written and read back with its own backend's reader; ``metrics.jsonl`` hands them every number."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.loggers import CSVLogger, MetricLogger, MLFlowLogger, TensorboardLogger, _backend
from experiments.metrics import MetricsLog
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


def test_wandb_logger_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    from experiments.loggers import WandbLogger

    logger = WandbLogger("test", save_dir=str(tmp_path), offline=True)
    logger.log_hparams({"seed": 0})
    logger.log_scalar("episode_return", 20.0, step=1024)
    logger.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_mlflow_logger_to_a_file_store(tmp_path: Path) -> None:
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger("weightsync", tracking_uri=uri)
    logger.log_hparams({"learner": {"lr": 5e-4}})
    logger.log_scalar("episode_return", 20.0, step=1024)
    run_id = logger.experiment.info.run_id
    logger.close()
    run = mlflow.tracking.MlflowClient(uri).get_run(run_id)
    assert run.data.metrics["episode_return"] == 20.0
    assert run.data.params["learner.lr"] == "0.0005"


def test_a_missing_backend_names_the_extra_to_install() -> None:
    with pytest.raises(ImportError, match=r'pip install -e "\.\[tensorboard\]"'):
        _backend("no_such_backend_module", "tensorboard")
