"""The sweep comparison on hand-made job directories: one row per job, in job order, failed jobs
included, and a plot even when a job logged no episode."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from experiments.comparison import _mean_curve, compare, labels, markdown_table


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
        "| sync=pipe | pipe | tensordict | completed | 480 | 12,346 | 0.5 | 1.25 | 1 "
        "| - | - | - | - | 2,048 |" in table
    )
    assert table in capsys.readouterr().out
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_compare_without_jobs_writes_nothing(tmp_path: Path) -> None:
    assert compare(tmp_path) == []
    assert not (tmp_path / "comparison.csv").exists()


def test_markdown_cells() -> None:
    table = markdown_table([{"a": None, "b": 0.000123, "c": 1234567, "d": True}])
    assert table.splitlines()[2] == "| - | 0.000123 | 1,234,567 | True |"


def test_jobs_without_a_summary_are_listed_as_failed(tmp_path: Path) -> None:
    make_job(tmp_path, "0", ["sync=pipe"], summary("pipe"), [20])
    (tmp_path / "1" / ".hydra").mkdir(parents=True)  # a job that died before writing anything
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- sync=none\n")
    jobs = compare(tmp_path)
    assert [(job.name, job.summary["status"], job.failed) for job in jobs] == [
        ("sync=pipe", "completed", False),
        ("sync=none", "no_summary", True),
    ]


def test_legend_labels_leave_out_the_overrides_every_job_shares(tmp_path: Path) -> None:
    make_job(tmp_path, "0", ["experiment=smoke", "sync=none"], summary("none"), [20])
    make_job(tmp_path, "1", ["experiment=smoke", "sync=pipe"], summary("pipe"), [30])
    assert list(labels(compare(tmp_path)).values()) == ["sync=none", "sync=pipe"]


def test_jobs_that_differ_by_seed_only_get_a_mean_and_spread(tmp_path: Path, capsys) -> None:
    for number, (sync, seed, final) in enumerate(
        [("pipe", 0, 400.0), ("pipe", 1, 500.0), ("none", 0, 20.0), ("none", 1, 22.0)]
    ):
        make_job(
            tmp_path,
            str(number),
            [f"sync={sync}", f"seed={seed}"],
            summary(sync, final_return=final),
            [final / 2, final],
        )
    compare(tmp_path)
    with (tmp_path / "comparison_seeds.csv").open() as file:
        rows = {r["configuration"]: r for r in csv.DictReader(file)}
    assert set(rows) == {"sync=pipe", "sync=none"}
    assert (rows["sync=pipe"]["seeds"], rows["sync=pipe"]["completed"]) == ("2", "2")
    assert float(rows["sync=pipe"]["final_return_mean"]) == 450.0
    assert float(rows["sync=pipe"]["final_return_std"]) == pytest.approx(70.71, abs=0.01)
    table = (tmp_path / "comparison_seeds.md").read_text()
    assert "| sync=none | 2 | 2 | 21 ± 1.41 |" in table
    assert table in capsys.readouterr().out
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_a_sweep_without_seeds_writes_no_seed_table(tmp_path: Path) -> None:
    make_job(tmp_path, "0", ["sync=none"], summary("none"), [20])
    compare(tmp_path)
    assert not (tmp_path / "comparison_seeds.md").exists()


def test_mean_curve_averages_the_seeds_that_have_a_value() -> None:
    assert _mean_curve([[(1, 10.0), (2, 20.0)], [(1, 30.0)]]) == ([1, 2], [20.0, 20.0], [10.0, 0.0])
