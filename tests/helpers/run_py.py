"""``python run.py ...`` as a user types it, from the repository root, for the framework tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The ``torchrun`` of the interpreter running the tests (its venv need not be on ``PATH``).
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def as_from_a_terminal() -> None:
    """``preexec_fn`` for a run.py that a test interrupts with Ctrl-C: SIGINT handled by default
    and not blocked, as in a shell's foreground job, whatever the test process inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])


def exit_code_within(proc: subprocess.Popen, within_s: float, output: Callable[[], str]) -> int:
    """``proc``'s exit code once it ends; an AssertionError with its ``output()`` if it is still
    running after ``within_s`` s."""
    try:
        return proc.wait(within_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running after {within_s} s:\n{output()}") from None


def launcher_env() -> dict[str, str]:
    """This environment without the variables a launcher (torchrun, Slurm) sets for a rank, so a
    launcher the test starts sets its own; output unbuffered."""
    from experiments.bench.netns import LAUNCH_VARS

    env = {
        k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM")
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_py(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``run.py`` with ``args`` in a fresh interpreter; its output captured as text."""
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
