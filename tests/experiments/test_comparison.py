"""The sweep comparison on hand-made job directories: one row per job, in job order, failed jobs
included, and a plot even when a job logged no episode."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from experiments.comparison import compare, markdown_table


def make_job(sweep: Path, name: str, overrides: list[str], summary: dict, returns: list) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "summary.json").write_text(json.dumps(summary))
    lines = [
        json.dumps({"frames": 1000 * (i + 1), "episode_return": r}) for i, r in enumerate(returns)
    ]
    (job / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))


def summary(sync: str, status: str = "completed", final_return: float | None = 20.0) -> dict:
    return {
        "sync": sync,
        "strategy": "tensordict",
        "status": status,
        "final_return": final_return,
        "frames_per_s": 12345.6,
        "sync_latency_p50_ms": 0.5,
        "sync_latency_p95_ms": 1.25,
        "staleness_mean": 1.0,
        "bytes_moved": 2048,
        "weights_match": sync != "none",
    }


def test_compare_writes_one_row_per_job_and_a_plot(tmp_path: Path, capsys) -> None:
    make_job(
        tmp_path, "10_sync=pipe", ["sync=pipe"], summary("pipe", final_return=480.0), [20, 400]
    )
    make_job(tmp_path, "2_sync=none", ["sync=none"], summary("none"), [20, None, 21])
    make_job(tmp_path, "3_sync=x", ["sync=shared-mem"], summary("shared-mem", "worker_failed"), [])
    (tmp_path / "multirun.yaml").write_text("{}\n")  # not a job

    jobs = compare(tmp_path)

    assert [job.name for job in jobs] == ["sync=none", "sync=shared-mem", "sync=pipe"]
    assert jobs[0].curve == [(1000, 20), (3000, 21)]  # iterations without an episode are skipped
    with (tmp_path / "comparison.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["sync"], r["status"], r["final_return"]) for r in rows] == [
        ("none", "completed", "20.0"),
        ("shared-mem", "worker_failed", "20.0"),
        ("pipe", "completed", "480.0"),
    ]
    table = (tmp_path / "comparison.md").read_text()
    assert (
        "| sync=pipe | pipe | tensordict | completed | 480 | 12,346 | 0.5 | 1.25 | 1 | 2,048 |"
        in table
    )
    assert table in capsys.readouterr().out
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_compare_without_jobs_writes_nothing(tmp_path: Path) -> None:
    assert compare(tmp_path) == []
    assert not (tmp_path / "comparison.csv").exists()


def test_markdown_cells() -> None:
    table = markdown_table([{"a": None, "b": 0.000123, "c": 1234567, "d": True}])
    assert table.splitlines()[2] == "| - | 0.000123 | 1,234,567 | True |"
