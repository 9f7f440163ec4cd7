"""The README's TorchRL example runs as written, for every backend its comment names."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers.readme import python_block_after

pytest.importorskip("torchrl", reason="the interop suite needs torchrl (the [torchrl] extra)")

AS_WRITTEN = '"shared-mem"'


def torchrl_example() -> str:
    return python_block_after("## Using weightsync with TorchRL")


def test_the_example_names_the_backends_this_test_runs():
    code = torchrl_example()
    assert AS_WRITTEN in code and '"pipe", "none"' in code


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("backend", ["shared-mem", "pipe", "none"])
def test_the_readme_torchrl_example_runs(tmp_path, backend):
    script = tmp_path / "example.py"
    script.write_text(torchrl_example().replace(AS_WRITTEN, f'"{backend}"'))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=190
    )
    assert done.returncode == 0, done.stderr[-3000:]
    versions = [int(v) for v in re.findall(r"policy version (\d+)", done.stdout)]
    assert len(versions) == 5, done.stdout
    if backend == "none":
        assert set(versions) == {0}
    else:  # the workers count the updates (a batch may be collected before the latest one)
        assert versions == sorted(versions) and versions[-1] >= 3, done.stdout
