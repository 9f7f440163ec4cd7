"""Fixtures shared by the whole suite: spawned processes that are always torn down, and a check
that no test leaves a shared-memory segment behind (see tests/helpers/shm.py). No test reaches
the network: the metric backends are kept offline for the whole run (``OFFLINE``)."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import Processes
from tests.helpers.shm import no_leaked_shared_memory as _no_leaked_shared_memory

# Set before any test runs, so that run.py subprocesses and spawned workers inherit them: W&B
# writes offline runs and reports no errors home (Sentry), MLflow sends no usage telemetry.
OFFLINE = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_ERROR_REPORTING": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}
os.environ.update(OFFLINE)

# One intra-op thread per process, here and (through the environment) in every process a test
# starts that does not choose its own (run.py's processes take run.torch_threads). The suite runs
# one test process per core beside the processes the tests spawn; torch's default of a thread per
# core oversubscribes the cores, and OpenMP's spinning threads then made an in-process learning
# test ten to forty times slower than it is alone (2 s alone, 95 s in the full suite, 2 cores).
TORCH_THREADS = 1
os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
torch.set_num_threads(TORCH_THREADS)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per core, at least 2 and at most 8. More
    workers than cores overloaded a 2-core machine: the sweeps, torchrun and Ray tests each start
    several processes that compute; ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides it."""
    if (chosen := os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")) is not None:
        return int(chosen)
    return max(2, min(len(os.sched_getaffinity(0)), 8))


def pytest_configure(config: pytest.Config) -> None:
    """An xdist worker becomes a session of its own, so that the /dev/shm leak check (which
    tells this test's processes from other programs by their session, tests/helpers/shm.py)
    does not blame a test for what a test on another worker holds at the same moment."""
    if os.environ.get("PYTEST_XDIST_WORKER") and os.getsid(0) != os.getpid():
        os.setsid()


@pytest.fixture
def procs() -> Iterator[Processes]:
    """Spawned processes and pipes, killed and closed after the test even when it fails."""
    processes = Processes()
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture(autouse=True)
def no_leaked_shared_memory() -> Iterator[None]:
    """Fail a test that leaves a new entry of its own in /dev/shm behind."""
    with _no_leaked_shared_memory():
        yield


def _sigint_state() -> tuple[object, bool, bool]:
    """This process's SIGINT: its Python handler, and whether it is ignored or blocked at the
    C level (what a child process inherits across exec)."""
    bit = 1 << (2 - 1)  # SIGINT is signal 2
    status = Path("/proc/self/status").read_text().splitlines()
    fields = dict(line.split(":\t") for line in status if line.startswith(("SigIgn", "SigBlk")))
    return (
        signal.getsignal(signal.SIGINT),
        bool(int(fields["SigIgn"], 16) & bit),
        bool(int(fields["SigBlk"], 16) & bit),
    )


@pytest.fixture(autouse=True)
def sigint_left_as_found() -> Iterator[None]:
    """Warn about (and undo) a test that leaves SIGINT handled, ignored or blocked otherwise
    than it found it: every run.py a later test starts would inherit it, and a Ctrl-C test of
    that worker then sees a run that cannot be interrupted."""
    before = _sigint_state()
    yield
    after = _sigint_state()
    if after != before:
        signal.signal(signal.SIGINT, before[0])
        if after[2] and not before[2]:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        warnings.warn(f"this test left SIGINT (handler, ignored, blocked) {before} -> {after}",
                      stacklevel=1)  # fmt: skip
