"""The README stays true: its library example runs as written (with fewer steps), for every
backend its comment names, and exits cleanly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers.readme import python_block_after

AS_WRITTEN = '"shared-mem"'


def library_example() -> str:
    return python_block_after("## Library example")


def test_the_example_names_the_backends_and_the_loop_this_test_rewrites():
    code = library_example()
    assert AS_WRITTEN in code and '"pipe", "none"' in code
    assert "range(100)" in code


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend", ["shared-mem", "pipe", "none"])
def test_the_readme_library_example_runs(tmp_path, backend):
    """As written, but for fewer steps, the backend, and a longer timeout: on a loaded 2-core
    machine two spawned workers importing torch may take longer than the default 10 s to reach
    their connect(), which the trainer's connect() waits for."""
    code = library_example().replace("range(100)", "range(3)")
    code = code.replace(AS_WRITTEN, f'"{backend}", timeout=60.0')
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=140
    )
    assert done.returncode == 0, done.stderr[-3000:]
