"""The /dev/shm leak check itself (tests/helpers/shm.py): it must not blame a test for what
another program on the machine creates, and it must still catch what the test leaks."""

from __future__ import annotations

import subprocess
import sys
import time
from multiprocessing import shared_memory

import pytest
import torch.multiprocessing as mp

from tests.helpers.inprocess import ThreadWorker
from tests.helpers.models import make_model
from tests.helpers.shm import leaked_since, shm_entries
from weightsync import WeightSyncScheme

pytestmark = pytest.mark.slow


@pytest.fixture
def other_program():
    """A program of another session creating and removing /dev/shm entries in a loop."""
    churner = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.shm_churn", "30"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # another program: not this test's process tree
    )
    try:
        assert churner.stdout.readline().strip() == "created", "the churner did not start"
        yield churner
    finally:
        churner.terminate()  # it removes what it made, as a well-behaved program does
        churner.wait(10)


def test_entries_of_another_program_are_not_blamed_on_the_test(other_program):
    windows_with_foreign_entries = 0
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # real shared-mem exchanges while the other program churns
        before = shm_entries()
        trainer_end, worker_end = mp.Pipe()
        trainer = WeightSyncScheme.from_backend("shared-mem", timeout=10.0)
        trainer.init_on_sender("policy", model=make_model(0), pipes=[trainer_end])
        worker = ThreadWorker(trainer, make_model(1), worker_end)
        trainer.connect()
        trainer.send()
        assert worker.wait_for(2) == 2
        worker.stop()
        trainer.shutdown()
        worker_end.close()
        time.sleep(0.3)
        windows_with_foreign_entries += bool(shm_entries() - before)
        assert leaked_since(before) == set()
    assert windows_with_foreign_entries > 0, "the other program made no entry during the test"
    assert other_program.poll() is None, "the other program stopped early"


def test_a_segment_the_test_leaks_is_caught(other_program):
    before = shm_entries()
    segment = shared_memory.SharedMemory(create=True, size=64)
    try:
        assert leaked_since(before) == {segment.name.lstrip("/")}
    finally:
        segment.close()
        segment.unlink()
