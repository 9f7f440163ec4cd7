"""``python run.py ...`` as a user types it, from the repository root, for the framework tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_py(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``run.py`` with ``args`` in a fresh interpreter; its output captured as text."""
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
