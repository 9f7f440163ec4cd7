"""The bench's TorchRL reference (``python -m experiments.bench.torchrl_reference``) runs TorchRL's
``DistributedWeightSyncScheme`` as a user types the command, and every figure it reports comes
from updates the worker verified in its own model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.run_py import ROOT

pytest.importorskip("torchrl", reason="the interop suite needs torchrl (the [torchrl] extra)")

UPDATES, WARMUP = 2, 1


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_the_torchrl_reference_measures_verified_updates(tmp_path):
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "experiments.bench.torchrl_reference", "--models", "1M",
         "--workers", "1", "--updates", str(UPDATES), "--warmup", str(WARMUP),
         "--gloo-repeats", "0", "--timeout-s", "30", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=190,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [result] = json.loads(out.read_text())["results"]
    assert "error" not in result, result
    case = (result["scheme"], result["model"], result["workers"])
    assert case == ("torchrl-distributed", "1M", 1)
    for figure in ("stall_ms", "fresh_ms"):
        stats = result["blocking"][figure]
        assert stats["n"] == UPDATES and 0 < stats["median"] <= stats["p95"], stats
    # The worker started from other weights: only delivered updates make these hold.
    assert result["verified_version"] == 1 + WARMUP + UPDATES
    assert result["checksum_ok"] is True
    assert result["torn_reads"] == 0
    assert "torchrl-distributed | 1M" in done.stdout
