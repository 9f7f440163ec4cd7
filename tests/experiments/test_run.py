"""``python run.py`` end to end, in subprocesses: the smoke preset for every sync x strategy (one
multirun, which also yields the comparison table and plot). Ctrl-C and other faults:
``test_run_faults.py``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.run_py import run_py
from tests.helpers.shm import leaked_since, shm_entries

SYNCS = ("none", "shared-mem", "pipe")
STRATEGIES = ("state_dict", "tensordict")
SMOKE_UPDATES = 8  # experiment=smoke: 8192 frames / (2 workers x 8 envs x 64 steps)
UNITS = ("episode_return", "loss", "frames_per_s", "sync_latency_ms", "bytes_moved", "staleness")

# the module-scoped sweep runs once: every test that reads it on one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("run_py_sweep")]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One multirun of the smoke preset over every sync x strategy: ``(sweep dir, stdout)``."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    shm_before = shm_entries()
    result = run_py(
        "-m",
        "experiment=smoke",
        f"sync={','.join(SYNCS)}",
        f"strategy={','.join(STRATEGIES)}",
        f"hydra.sweep.dir={sweep_dir}",
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert leaked_since(shm_before) == set(), "the sweep left /dev/shm entries behind"
    return sweep_dir, result.stdout


def job_dir(sweep_dir: Path, sync: str, strategy: str) -> Path:
    """The job directory (named by job number) whose overrides chose ``sync`` and ``strategy``."""
    (found,) = [
        path
        for path in sweep_dir.iterdir()
        if (path / ".hydra" / "overrides.yaml").exists()
        and {f"sync={sync}", f"strategy={strategy}"}
        <= set(yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()))
    ]
    assert found.name.isdigit(), f"job directories are named by number only, not {found.name!r}"
    return found


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("sync", SYNCS)
def test_smoke_run_summary(sweep, sync: str, strategy: str) -> None:
    directory = job_dir(sweep[0], sync, strategy)
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["status"] == "completed", summary["error"]
    assert (summary["sync"], summary["strategy"]) == (sync, strategy)
    assert summary["num_updates"] == SMOKE_UPDATES
    assert summary["frames"] == 8192
    assert summary["frames_per_s"] > 0
    assert summary["initial_return"] is not None and summary["final_return"] is not None
    assert summary["sync_count"] == SMOKE_UPDATES
    assert 0 <= summary["sync_latency_p50_ms"] <= summary["sync_latency_p95_ms"]

    records = [json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, SMOKE_UPDATES + 1))
    assert all(set(UNITS) <= set(r) for r in records)

    workers = summary["workers"]
    assert sorted(workers) == ["0", "1"]
    if sync == "none":
        # The control arm: workers still act with the initial weights, ever more stale.
        assert summary["weights_match"] is False
        assert all(w == {"version": 0, "weights": "initial"} for w in workers.values())
        assert summary["bytes_moved"] == 0
        assert summary["staleness_max"] == SMOKE_UPDATES - 1
    else:
        # After the last sync every worker holds exactly the trainer's weights.
        assert summary["weights_match"] is True
        for w in workers.values():
            assert w == {"version": summary["trainer_version"], "weights": "latest"}
        copies = 2 if sync == "pipe" else 1  # pipe: one copy per worker; shared-mem: one
        assert summary["bytes_moved"] == summary["model_bytes"] * copies * SMOKE_UPDATES
        assert summary["staleness_max"] <= 2  # workers act on the previous update's weights


@pytest.mark.timeout(300)
def test_multirun_ends_with_a_comparison_table_and_plot(sweep) -> None:
    sweep_dir, stdout = sweep
    with (sweep_dir / "comparison.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(SYNCS) * len(STRATEGIES)
    assert {(r["sync"], r["strategy"]) for r in rows} == {(s, t) for s in SYNCS for t in STRATEGIES}
    for column in ("final_return", "frames_per_s", "sync_latency_p50_ms", "staleness_mean"):
        assert all(r[column] for r in rows), column
    table = (sweep_dir / "comparison.md").read_text()
    assert table.count("\n") == 2 + len(rows)
    assert "sync=none strategy=state_dict |" in table  # jobs are named by their overrides
    assert table in stdout  # printed at the end of the sweep
    assert (sweep_dir / "comparison.png").read_bytes().startswith(b"\x89PNG")
