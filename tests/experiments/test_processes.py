"""Spawned processes start from inside a joblib/loky worker (hydra-joblib-launcher's jobs)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.common.processes import spawnable_start_method


def _nothing() -> None:
    pass


def spawn_one(guarded: bool) -> tuple[str | None, int | None, str | None]:
    """In a loky worker: (start method before, the spawned child's exit code, method after)."""
    before = multiprocessing.get_start_method(allow_none=True)
    with spawnable_start_method() if guarded else _unguarded():
        child = multiprocessing.get_context("spawn").Process(target=_nothing)
        child.start()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
            child.join()
    return before, child.exitcode, multiprocessing.get_start_method(allow_none=True)


class _unguarded:
    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


ROOT = Path(__file__).resolve().parents[2]
# In a process of its own, so that loky's worker pool and semaphores end with it.
IN_LOKY_WORKERS = """
import json, joblib
from tests.experiments.test_processes import spawn_one
with joblib.parallel_config(backend="loky", n_jobs=2):  # 1 would run in this process
    print(json.dumps(joblib.Parallel()(joblib.delayed(spawn_one)(f) for f in (False, True))))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_spawned_child_of_a_loky_worker_starts_only_with_the_guard() -> None:
    pytest.importorskip("joblib")
    done = subprocess.run(
        [sys.executable, "-c", IN_LOKY_WORKERS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    unguarded, guarded = (tuple(r) for r in json.loads(done.stdout.splitlines()[-1]))
    # Without the guard the child dies re-creating the parent's 'loky' start method ...
    assert unguarded == ("loky", 1, "loky")
    # ... with it, the child runs, and the loky worker's own start method is restored.
    assert guarded == ("loky", 0, "loky")


def test_the_guard_leaves_a_standard_start_method_alone() -> None:
    before = multiprocessing.get_start_method(allow_none=True)
    with spawnable_start_method():
        assert multiprocessing.get_start_method(allow_none=True) == before
