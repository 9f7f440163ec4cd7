"""Another program on the machine: creates and removes /dev/shm entries in a loop, as joblib's
loky workers and other test runs do. Run as ``python -m tests.helpers.shm_churn SECONDS``."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time


def churn(seconds: float) -> None:
    """Every 0.7 s (longer than the leak check's second look): a held semaphore, a held file
    named like loky's, a file named like torch's file_system segments, a joblib-like folder."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # clean up on terminate()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        lock = multiprocessing.get_context("spawn").Lock()  # a sem.mp-* entry it holds
        loky_like = f"/dev/shm/sem.loky-{os.getpid()}-{n}"
        torch_like = f"/dev/shm/torch_{os.getpid()}_{n}_0"
        held = os.open(loky_like, os.O_CREAT | os.O_RDWR, 0o600)
        folder = tempfile.mkdtemp(prefix="joblib_memmapping_folder_", dir="/dev/shm")
        try:
            with open(torch_like, "wb") as f:
                f.write(b"x")
            print("created", flush=True)
            time.sleep(0.7)
        finally:
            os.close(held)
            for path in (loky_like, torch_like):
                if os.path.exists(path):
                    os.unlink(path)
            shutil.rmtree(folder, ignore_errors=True)
            del lock


if __name__ == "__main__":
    churn(float(sys.argv[1]))
