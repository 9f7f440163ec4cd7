"""Reading back what the W&B and MLflow loggers wrote, as their own tools read it: a W&B offline
run's ``run-<id>.wandb`` file (the records ``wandb sync`` uploads) and an MLflow tracking store
through ``MlflowClient``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

_WANDB_HEADER = b":W&B"  # then 0xBEE1 and a version byte: 7 bytes in all
_BLOCK = 32 * 1024  # the LevelDB log format wandb writes: 32 KiB blocks of chunked records
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path) -> list[bytes]:
    """The serialised records of a ``.wandb`` file (LevelDB log format: each chunk has a 4-byte
    checksum, a 2-byte length and a type; a record is one FULL chunk or FIRST, MIDDLE..., LAST;
    a block's tail shorter than a chunk header is padding)."""
    data = path.read_bytes()
    assert data[:4] == _WANDB_HEADER, f"{path} is not a W&B run file"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # padding up to the next block
            pos += _BLOCK - pos % _BLOCK
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (_FULL, _FIRST):
            pending = chunk
        elif kind in (_MIDDLE, _LAST):
            pending += chunk
        if kind in (_FULL, _LAST):
            records.append(pending)
    return records


def read_wandb_offline_run(save_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The history rows and the config of the one offline run under ``<save_dir>/wandb``."""
    proto = pytest.importorskip("wandb.proto.wandb_internal_pb2")
    (run_file,) = (save_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, kinds = [], {}, []
    for raw in _wandb_records(run_file):
        record = proto.Record()
        record.ParseFromString(raw)
        kinds.append(kind := record.WhichOneof("record_type"))
        if kind == "history":
            history.append(
                {_key(item): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "config":
            config |= {_key(item): json.loads(item.value_json) for item in record.config.update}
    assert kinds[-1:] == ["exit"], f"{run_file} is unfinished (its records: {kinds})"
    return history, config


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_mlflow_run(
    tracking_uri: str, experiment: str
) -> tuple[dict[str, list[tuple[int, float]]], dict[str, str]]:
    """The one run of ``experiment`` in the store at ``tracking_uri``, through MLflow's client:
    each metric's ``(step, value)`` history, and the run's parameters."""
    client = pytest.importorskip("mlflow.tracking").MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    history = {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        for name in run.data.metrics
    }
    return history, run.data.params
