"""``python run.py run.mode=async`` end to end: workers that never wait, V-trace, every scheme.

One multirun over the single-machine schemes, long enough to learn (15 updates): each job
completes, every worker ends with the trainer's final weights (``sync=none``: its initial ones),
the metrics carry the staleness distribution and the importance ratios, and the schemes that
sync learn CartPole. (``sync=distributed`` runs async under torchrun in
``test_run_distributed.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.run_py import run_py

SYNCS = ("none", "shared-mem", "pipe")
UPDATES = 15  # 30720 frames / (2 workers x 8 envs x 128 steps)
ASYNC_METRICS = ("staleness", "staleness_min", "staleness_max", "rollouts_dropped",
                 "importance_ratio_mean", "importance_ratio_std")  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(420),
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{sync: job directory}`` of one async multirun over the schemes."""
    sweep_dir = tmp_path_factory.mktemp("async")
    result = run_py(
        "-m", "run.mode=async", "learner.correction=vtrace", "run.total_frames=30720",
        f"sync={','.join(SYNCS)}", f"hydra.sweep.dir={sweep_dir}", timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = {}
    for job in sweep_dir.iterdir():
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.exists():
            (sync,) = [o.split("=")[1] for o in yaml.safe_load(overrides.read_text())
                       if o.startswith("sync=")]  # fmt: skip
            jobs[sync] = job
    return jobs


@pytest.mark.parametrize("sync", SYNCS)
def test_async_runs_complete_with_the_final_weights_everywhere(sweep, sync: str) -> None:
    summary = json.loads((sweep[sync] / "summary.json").read_text())
    assert summary["status"] == "completed", summary["error"]
    assert (summary["mode"], summary["correction"]) == ("async", "vtrace")
    assert summary["num_updates"] == UPDATES and summary["rollouts_dropped"] == 0
    assert summary["weights_match"] is (sync != "none"), summary["workers"]
    records = [
        json.loads(line) for line in (sweep[sync] / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["iteration"] for r in records] == list(range(1, UPDATES + 1))
    for record in records:
        assert set(ASYNC_METRICS) <= set(record)
        assert record["staleness_min"] <= record["staleness"] <= record["staleness_max"]
        assert record["importance_ratio_std"] >= 0
    if sync == "none":  # the workers act with the initial weights: ever more stale
        assert records[-1]["staleness_min"] >= UPDATES - 2
    else:
        assert summary["final_return"] > summary["initial_return"] + 10, summary  # it learns
        assert summary["staleness_max"] <= 6, summary  # two rollouts asked ahead, not more
