"""The sync benchmark's harness: its config composes, its report renders, and one tiny case with
a real spawned worker yields every figure, each update verified inside the worker."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments.bench import BenchConfig, run
from experiments.bench.harness import measure_case, summarize
from experiments.bench.models import build_model, checksum, read_stamps, stamp
from experiments.bench.report import machine_info, markdown
from experiments.bench.runner import bench_config
from weightsync import WeightSyncScheme

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = dict(models=["tiny"], num_workers=[1], warmup=1, updates=2, flatness_updates=3)


def test_the_bench_config_composes_into_a_typed_bench_node():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("bench", overrides=["sync=shared-mem", "bench.updates=7"])
    bench = bench_config(cfg)
    assert isinstance(bench, BenchConfig)
    assert bench.updates == 7
    assert bench.models == ["1M", "10M", "100M", "small-1000"]
    assert bench.num_workers == [1, 2, 4]


def test_stamps_carry_the_version_and_the_checksum_sees_every_byte():
    model = build_model("small-1000")
    stamp(model, 42)
    assert read_stamps(model) == [42.0] * 6
    before = checksum(model)
    list(model.parameters())[300].data.view(-1)[5] += 1  # an unstamped tensor
    assert checksum(model) != before


def test_summary_is_the_median_and_the_interpolated_p95_of_training_runs():
    stats = summarize([float(x) for x in range(1, 101)])
    assert stats == {"median": 50.5, "p95": pytest.approx(95.05), "n": 100}
    assert summarize([]) is None


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["shared-mem", "pipe", "none"])
def test_one_tiny_case_reports_every_figure_verified_in_the_worker(backend):
    cfg = BenchConfig(**TINY)
    make = functools.partial(
        WeightSyncScheme.from_backend, backend, strategy="tensordict", timeout=30.0
    )
    r = measure_case(make, "tiny", 1, cfg)
    assert (r["scheme"], r["strategy"], r["workers"]) == (backend, "tensordict", 1)
    assert r["bytes"] == 2 * (16 * 16 + 16) * 4 and r["floor_ms"] > 0
    for mode in ("blocking", "async"):
        assert r[mode]["stall_ms"]["n"] == 2
    assert r["async"]["fb_ms"]["median"] > 0
    assert r["memory"]["flat_updates"] == 3 and len(r["memory"]["flat_growth_mb"]) == 1
    if backend == "none":  # nothing moves: nothing to verify
        assert r["blocking"]["fresh_ms"] is None and r["checksum_ok"] is None
        return
    sent = 1 + 2 * (1 + 2) + 3  # connect, warm-up + measured per mode, flatness updates
    assert r["verified_version"] == sent  # the worker read the last version from its own model
    assert r["checksum_ok"] is True and r["torn_reads"] == 0
    assert r["blocking"]["fresh_ms"]["n"] == 2 and r["async"]["fresh_ms"]["n"] == 2
    assert r["gb_per_s"] > 0 and r["x_floor"] > 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_writes_json_and_a_markdown_table(tmp_path):
    cfg = BenchConfig(**TINY, schemes=["shared-mem"], output_dir=str(tmp_path))
    out = run(cfg)
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["results"][0]["checksum_ok"] is True
    assert payload["machine"]["cores"] >= 1
    table = (tmp_path / "results.md").read_text()
    assert table == out["markdown"]
    assert "| shared-mem | state_dict | tiny |" in table


def test_markdown_marks_failed_cases():
    failed = {"scheme": "pipe", "strategy": "state_dict", "model": "100M", "bytes": 2**20}
    failed |= {"workers": 4, "floor_ms": 45.0, "error": "skipped: needs ~9 GiB"}
    assert "**skipped: needs ~9 GiB**" in markdown([failed], machine_info())


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_python_m_experiments_bench_is_the_entry_point(tmp_path):
    tiny = [f"bench.{key}={value}".replace("'", "") for key, value in TINY.items()]
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench", "sync=shared-mem", *tiny,
         f"hydra.run.dir={tmp_path}"],
        cwd=CONF.parent, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (result,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert (result["scheme"], result["strategy"]) == ("shared-mem", "tensordict")
    assert (result["model"], result["workers"]) == ("tiny", 1)
    assert result["checksum_ok"] is True
