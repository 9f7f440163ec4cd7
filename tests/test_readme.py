"""The README stays true: its library example runs as written (with fewer steps), for every
backend its comment names, and exits cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.readme import README, python_block_after

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


ENDINGS = {
    "raises": '    raise RuntimeError("the trainer crashed")\n',
    "returns": "    pass\n",
}


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("ending", list(ENDINGS))
@pytest.mark.parametrize("backend", ["shared-mem", "pipe", "none"])
def test_the_readme_example_exits_when_the_trainer_ends_without_shutdown(tmp_path, backend, ending):
    """The example as written, but the trainer raises (or simply ends) where it would call
    ``shutdown()``: its non-daemon workers must still exit, so the trainer's interpreter, which
    joins them at exit, ends within seconds and leaves no worker behind."""
    code = library_example().replace("range(100)", "range(3)")
    code = code.replace(AS_WRITTEN, f'"{backend}", timeout=60.0')
    start = "    for p in workers: p.start()\n"
    assert start in code and "    scheme.shutdown()" in code
    code = code.replace(
        start, start + '    print("workers", *[p.pid for p in workers], flush=True)\n'
    )
    code = code[: code.index("    scheme.shutdown()")] + '    print("ending", flush=True)\n'
    script = tmp_path / "example.py"
    script.write_text(code + ENDINGS[ending])
    trainer = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(README.parent)},  # this checkout's weightsync
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, killed whole if it hangs
    )
    workers: list[int] = []
    try:
        for line in trainer.stdout:  # until the trainer reaches its end (or exits early)
            if line.startswith("workers"):
                workers = [int(pid) for pid in line.split()[1:]]
            if line.startswith("ending"):
                break
        assert workers, f"the example did not start its workers: {trainer.stderr.read()[-3000:]}"
        # Liveness bounds (seconds on an idle machine). With "none", connect() does not wait for
        # the workers: they may still be importing torch (a minute on a loaded machine) when the
        # trainer ends, and the trainer's interpreter joins them.
        within_s = 120 if backend == "none" else 60
        try:
            trainer.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"the trainer did not exit within {within_s} s of ending without shutdown()"
            )
        stderr = trainer.stderr.read()
        assert trainer.returncode == (1 if ending == "raises" else 0), stderr[-3000:]
        assert ending != "raises" or "the trainer crashed" in stderr
        deadline = time.monotonic() + 30  # a liveness bound: they exit with the trainer
        while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.05)
        assert not [pid for pid in workers if _alive(pid)], "workers outlived the trainer"
    finally:
        if trainer.poll() is None:
            os.killpg(trainer.pid, signal.SIGKILL)
            trainer.wait(10)
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
