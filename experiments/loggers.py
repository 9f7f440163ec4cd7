"""Metric loggers for the ``logger`` config group, shaped like TorchRL's.

Each logger is built from its ``_target_`` (``conf/logger/*.yaml``) and offers what the training
loop calls: ``log_scalar(name, value, step)`` and ``log_hparams(cfg)``, the methods of TorchRL's
``torchrl.record.loggers.Logger``, so a TorchRL logger can be the ``_target_`` where TorchRL is
installed; ``close()`` is called where a logger has one. ``metrics.jsonl`` is written whatever the
group says (the sweep comparison reads it); these go beside it. The heavy backends are imported
only when chosen, and are optional extras: ``pip install -e ".[tensorboard]"`` (or ``wandb``,
``mlflow``).
"""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MetricLogger(Protocol):
    """What the training loop calls on a logger (TorchRL's ``Logger`` has both)."""

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None: ...

    def log_hparams(self, cfg: dict[str, Any]) -> None: ...


def _backend(module: str, extra: str) -> ModuleType:
    """Import an optional backend, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"logger={extra} needs the {module.split('.')[0]!r} package, which is not installed: "
            f'pip install -e ".[{extra}]", or pick another logger (jsonl, csv).'
        ) from err


class CSVLogger:
    """Scalars in ``<log_dir>/<exp_name>/scalars.csv`` (``name,step,value`` rows, flushed per
    row) and the config in ``hparams.json`` beside it."""

    def __init__(self, exp_name: str, log_dir: str) -> None:
        self.log_dir = Path(log_dir) / exp_name
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._file = (self.log_dir / "scalars.csv").open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["name", "step", "value"])

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self._writer.writerow([name, step, value])
        self._file.flush()

    def log_hparams(self, cfg: dict[str, Any]) -> None:
        (self.log_dir / "hparams.json").write_text(json.dumps(cfg, indent=2) + "\n")

    def close(self) -> None:
        self._file.close()


class TensorboardLogger:
    """An event file in ``<log_dir>/<exp_name>/`` (``tensorboard --logdir <log_dir>``); the config
    as a text summary named ``hparams``."""

    def __init__(self, exp_name: str, log_dir: str) -> None:
        tensorboard = _backend("torch.utils.tensorboard", "tensorboard")
        self.log_dir = Path(log_dir) / exp_name
        self.experiment = tensorboard.SummaryWriter(log_dir=str(self.log_dir))

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self.experiment.add_scalar(name, value, global_step=step)

    def log_hparams(self, cfg: dict[str, Any]) -> None:
        text = json.dumps(cfg, indent=2)
        self.experiment.add_text("hparams", "```\n" + text + "\n```", global_step=0)

    def close(self) -> None:
        self.experiment.close()


class WandbLogger:
    """A Weights & Biases run in ``save_dir``; ``offline=True`` writes it locally, for
    ``wandb sync`` later."""

    def __init__(
        self, exp_name: str, save_dir: str, project: str = "weightsync", offline: bool = False
    ) -> None:
        wandb = _backend("wandb", "wandb")
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        self.experiment = wandb.init(
            project=project,
            name=exp_name or None,
            dir=save_dir,
            mode="offline" if offline else "online",
            reinit=True,
        )

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self.experiment.log({name: value, "trainer/step": step})

    def log_hparams(self, cfg: dict[str, Any]) -> None:
        self.experiment.config.update(cfg, allow_val_change=True)

    def close(self) -> None:
        self.experiment.finish()


class MLFlowLogger:
    """An MLflow run in the experiment ``exp_name`` of the tracking store at ``tracking_uri``
    (e.g. ``sqlite:///<output dir>/mlflow.db``; ``mlflow ui --backend-store-uri`` that)."""

    def __init__(self, exp_name: str, tracking_uri: str) -> None:
        self._mlflow = _backend("mlflow", "mlflow")
        self._mlflow.set_tracking_uri(tracking_uri)
        self._mlflow.set_experiment(exp_name)
        self.experiment = self._mlflow.start_run()

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        self._mlflow.log_metric(name, value, step=step)

    def log_hparams(self, cfg: dict[str, Any]) -> None:
        self._mlflow.log_params(_flatten(cfg))

    def close(self) -> None:
        self._mlflow.end_run()


def _flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (MLflow parameters are flat)."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
