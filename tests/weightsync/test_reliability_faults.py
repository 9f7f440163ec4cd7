"""Process faults with real processes and real signals.

* a worker killed with SIGKILL mid-run: the trainer's next ``send`` raises an error naming it
  within the timeout, and the loop goes on with the survivors (``remove_workers``);
* a worker frozen with SIGSTOP: ``send`` raises SyncTimeoutError naming it within the timeout;
  once it runs again it catches up with one complete version;
* the trainer killed with SIGKILL: every worker notices and exits within a few seconds;
* after each: nothing left in ``/dev/shm`` (the autouse fixture in ``conftest.py`` compares it
  before and after every test) and no process left behind.

Shared memory uses torch's ``file_descriptor`` strategy (Linux default): segments are unlinked
as soon as they are created and live only as long as a process maps them, so a SIGKILL cannot
leak a named ``/dev/shm`` entry, and no ``torch_shm_manager`` (the ``file_system`` strategy's
daemon) is involved.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest
import torch.multiprocessing as mp

from tests.helpers.fault_workers import ready_then_serve, trainer_with_workers
from tests.helpers.models import make_model, perturb, state_of
from tests.helpers.shm import made_by_another_program, shm_entries
from tests.helpers.workers import REPLY_S, ask
from weightsync import PeerDiedError, SyncTimeoutError, WeightSyncScheme

pytestmark = pytest.mark.slow

BACKENDS = ["pipe", "shared-mem"]
TIMEOUT_S = 3.0
# How late past its timeout an error may come on a loaded 2-core machine: a liveness bound
# (the error comes, at the timeout rather than at a retry or never), not a speed claim.
LATE_S = 10.0


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running (not zombie) process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: list[int], within_s: float) -> list[int]:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _fleet(procs, scheme, num_workers=2, *, keep_worker_ends=False):
    """Start workers and wait until each is ready; the trainer keeps only its own pipe ends,
    unless ``keep_worker_ends`` (as the README example does: it never closes them)."""
    pipes, controls, processes = [], [], []
    for _ in range(num_workers):
        here, there = procs.pipe()
        ctl_here, ctl_there = procs.pipe()
        processes.append(procs.start(ready_then_serve, scheme, there, ctl_there))
        if not keep_worker_ends:
            there.close()  # a dead worker's pipe then reaches end of file in the trainer
        pipes.append(here)
        controls.append(ctl_here)
    for w, ctl in enumerate(controls):
        assert ctl.poll(REPLY_S), f"worker {w} did not start"
        assert ctl.recv()[0] == "ready"
    return pipes, controls, processes


def _connect(scheme, model, pipes):
    scheme.init_on_sender("policy", model=model, pipes=pipes)
    scheme.connect()


def _assert_survivors_hold(controls, model, version, survivors):
    want = state_of(model)
    for w in survivors:
        _, held, state = ask(controls[w], "sync", version, 10.0)
        assert held == version, f"worker {w} holds version {held}, not {version}"
        for key, value in want.items():
            assert (
                (state[key] == value)
                if not hasattr(value, "shape")
                else bool((state[key] == value).all())
            ), f"worker {w}: {key} differs"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
def test_worker_killed_mid_run_is_named_within_the_timeout_and_survivors_go_on(procs, backend):
    scheme = WeightSyncScheme.from_backend(backend, timeout=TIMEOUT_S)
    pipes, controls, processes = _fleet(procs, scheme)
    model = make_model(0)
    _connect(scheme, model, pipes)
    victim = processes[1]
    killer = threading.Timer(0.5, os.kill, (victim.pid, signal.SIGKILL))
    killer.start()
    error, waited, sends = None, 0.0, 0
    deadline = time.monotonic() + 30.0
    try:
        while error is None and time.monotonic() < deadline:  # send as fast as possible
            perturb(model, 1)
            started = time.monotonic()
            try:
                scheme.send()
                sends += 1
            except (PeerDiedError, SyncTimeoutError) as err:
                error, waited = err, time.monotonic() - started
    finally:
        killer.cancel()
    assert error is not None, f"{sends} sends after worker 1 was killed went through unnoticed"
    assert error.workers == [1], error
    assert re.search(r"worker(\(s\))? \[?1\b", str(error)) and "'policy'" in str(error), error
    # a liveness bound: named by the send that found it dead, or by the timeout, not later
    assert waited <= TIMEOUT_S + LATE_S, f"the error came after {waited:.1f} s"
    victim.join(5)
    assert victim.exitcode == -signal.SIGKILL

    sender = scheme.get_sender()
    sender.remove_workers(error.workers)  # go on with the survivors
    assert sorted(sender.acked_versions) == [0]
    for _ in range(3):
        perturb(model, 1)
        scheme.send()
    _assert_survivors_hold(controls, model, sender.version, survivors=[0])
    for w in (0,):
        controls[w].send(("stop",))
    scheme.shutdown()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_worker_is_named_at_once_though_the_trainer_kept_its_pipe_ends(procs, backend):
    """The trainer still holds a copy of each worker's pipe end, so a dead worker's pipe never
    reaches end of file: its death must be seen through its process, at once (a time-out would
    take the whole 60 s and be a SyncTimeoutError)."""
    scheme = WeightSyncScheme.from_backend(backend, timeout=60.0)
    pipes, controls, processes = _fleet(procs, scheme, keep_worker_ends=True)
    model = make_model(0)
    _connect(scheme, model, pipes)
    victim = processes[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(5)
    perturb(model, 1)
    with pytest.raises(PeerDiedError) as info:
        scheme.send()
    assert info.value.workers == [1], info.value
    assert re.search(r"worker(\(s\))? \[?1\b", str(info.value)), info.value

    sender = scheme.get_sender()
    sender.remove_workers(info.value.workers)  # go on with the survivor
    perturb(model, 1)
    scheme.send()
    _assert_survivors_hold(controls, model, sender.version, survivors=[0])
    controls[0].send(("stop",))
    scheme.shutdown()


@pytest.mark.timeout(90)
def test_frozen_pipe_worker_is_named_within_the_timeout_and_catches_up_once_thawed(procs):
    scheme = WeightSyncScheme.from_backend("pipe", timeout=TIMEOUT_S)
    pipes, controls, processes = _fleet(procs, scheme, num_workers=2)
    model = make_model(0)
    _connect(scheme, model, pipes)
    os.kill(processes[0].pid, signal.SIGSTOP)
    try:
        perturb(model, 1)
        started = time.monotonic()
        with pytest.raises(SyncTimeoutError, match="worker 0 did not acknowledge") as info:
            scheme.send()
        waited = time.monotonic() - started
        assert info.value.workers == [0]
        assert TIMEOUT_S - 0.5 <= waited <= TIMEOUT_S + LATE_S, waited  # the timeout, not less
        sender = scheme.get_sender()
        assert sender.acked_versions[0] is None  # unknown until it answers again
        assert sender.acked_versions[1] == sender.version
        perturb(model, 1)  # the trainer goes on changing its weights while worker 0 sleeps
    finally:
        os.kill(processes[0].pid, signal.SIGCONT)
    scheme.send()  # every worker answers again
    _assert_survivors_hold(controls, model, sender.version, survivors=[0, 1])
    for ctl in controls:
        ctl.send(("stop",))
    scheme.shutdown()


@pytest.mark.timeout(90)
def test_frozen_shared_mem_worker_holds_up_no_send_and_catches_up_once_thawed(procs):
    """Shared-mem publishes snapshots that workers adopt when they next receive: a frozen worker
    makes no send wait (there is a free buffer for every worker, num_workers + 2), and
    ``acked_versions`` shows the version it still holds, as the README's table says."""
    scheme = WeightSyncScheme.from_backend("shared-mem", timeout=TIMEOUT_S)
    pipes, controls, processes = _fleet(procs, scheme, num_workers=2)
    model = make_model(0)
    _connect(scheme, model, pipes)
    sender = scheme.get_sender()
    held = sender.version
    os.kill(processes[0].pid, signal.SIGSTOP)
    try:
        for _ in range(5):
            perturb(model, 1)
            scheme.send()  # never waits for the frozen worker, never raises
        assert sender.acked_versions[0] == held, sender.acked_versions
        _assert_survivors_hold(controls, model, sender.version, survivors=[1])
    finally:
        os.kill(processes[0].pid, signal.SIGCONT)
    _assert_survivors_hold(controls, model, sender.version, survivors=[0, 1])  # the newest
    assert sender.acked_versions == {0: sender.version, 1: sender.version}
    for ctl in controls:
        ctl.send(("stop",))
    scheme.shutdown()


@pytest.mark.timeout(90)
def test_with_two_buffers_a_lagging_worker_leaves_no_free_snapshot_buffer(procs):
    """``num_buffers=2``, fewer than the default: one snapshot is the frozen worker's, the other
    the newest published, so the send after that has nowhere to write. It says so within the
    timeout and publishes nothing; once the worker runs again it adopts the newest snapshot,
    freeing its old one, and the next send goes out."""
    scheme = WeightSyncScheme.from_backend("shared-mem", timeout=TIMEOUT_S, num_buffers=2)
    pipes, controls, processes = _fleet(procs, scheme, num_workers=1)
    model = make_model(0)
    _connect(scheme, model, pipes)
    sender = scheme.get_sender()
    os.kill(processes[0].pid, signal.SIGSTOP)
    try:
        perturb(model, 1)
        scheme.send()  # into the one buffer the worker does not hold
        published = sender.version
        perturb(model, 1)
        with pytest.raises(SyncTimeoutError, match="no free snapshot buffer") as info:
            scheme.send()
        assert "num_buffers" in str(info.value), info.value  # the message names the fix
        assert sender.version == published, "a send that found no buffer moved the version"
        assert sender.acked_versions == {0: 1}
    finally:
        os.kill(processes[0].pid, signal.SIGCONT)
    scheme.send()  # waits, within the timeout, for the worker to adopt version 2
    _assert_survivors_hold(controls, model, sender.version, survivors=[0])
    assert sender.version == published + 1
    controls[0].send(("stop",))
    scheme.shutdown()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_exit_within_seconds_when_the_trainer_is_killed(procs, backend, tmp_path):
    """Each worker's next ``receive()`` raises PeerDiedError (the README's promise), read back
    from the file each worker writes as it exits: a worker crashing any other way fails."""
    ctl_here, ctl_there = procs.pipe()
    trainer = procs.start(trainer_with_workers, backend, 2, ctl_there, str(tmp_path), daemon=False)
    # a liveness bound: three nested spawns, each importing torch, on a loaded 2-core machine
    assert ctl_here.poll(150), "the trainer did not start its workers within 150 s"
    kind, worker_pids = ctl_here.recv()
    assert kind == "workers" and all(_alive(p) for p in worker_pids)
    os.kill(trainer.pid, signal.SIGKILL)  # mid-run: the trainer sends in a loop once connected
    trainer.join(5)
    try:
        # a liveness bound, not a speed claim: workers see the death in well under a second
        # when the machine is idle, but a loaded 2-core CI machine can stall a process for seconds
        left = _wait_gone(worker_pids, within_s=30.0)
        assert not left, f"workers {left} outlived their trainer by more than 30 s"
    finally:
        for pid in worker_pids:  # never leave an orphan behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    for w in range(len(worker_pids)):
        report = tmp_path / f"worker{w}"
        assert report.exists(), f"worker {w} exited without reporting how its receive() ended"
        outcome = report.read_text()
        assert outcome.startswith("PeerDiedError: "), f"worker {w}: {outcome}"
        assert "trainer" in outcome, f"worker {w}'s error does not name the trainer: {outcome}"


def test_shared_memory_uses_the_file_descriptor_strategy():
    """The strategy that cannot leak a named segment on SIGKILL (see the module docstring)."""
    assert mp.get_sharing_strategy() == "file_descriptor"
    named = [e for e in shm_entries() if e.startswith("torch_")]
    assert not [e for e in named if not made_by_another_program(e)]
    managers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"torch_shm_manager" in f.read():
                    managers.append(int(pid))
        except OSError:
            continue
    assert not managers, f"torch_shm_manager processes {managers} are running"


@pytest.mark.timeout(30)
def test_every_silent_pipe_worker_is_named_with_the_whole_timeout():
    """Two workers that never answer: one error names both, each with the time it was given."""
    ends = [mp.get_context("spawn").Pipe() for _ in range(2)]
    scheme = WeightSyncScheme.from_backend("pipe", timeout=0.3)
    try:
        scheme.init_on_sender("policy", model=make_model(0), pipes=[a for a, _ in ends])
        started = time.monotonic()
        with pytest.raises(SyncTimeoutError) as info:
            scheme.connect()
        assert 0.3 <= time.monotonic() - started < 0.3 + LATE_S  # one timeout for both workers
        assert info.value.workers == [0, 1]
        message = str(info.value)
        for w in (0, 1):
            assert f"worker {w} did not acknowledge version 1 of model 'policy' within 0.3 s" in (
                message
            ), message
        assert set(scheme.get_sender().acked_versions.values()) == {None}
    finally:
        scheme.shutdown()
        for a, b in ends:
            a.close()
            b.close()
