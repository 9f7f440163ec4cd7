"""The worker's side of the guarantees, with spawned workers under real conditions: a worker
that refuses updates keeps exactly what it held while the trainer keeps sending (and the trainer
is told); a slow first worker does not break the scheme; a worker model changed after connect()
is validated as it is now; ``receive()`` before ``connect()``; a scheme mismatch between the two
ends; a too-small ``/dev/shm``; a worker reading its model from a second thread."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers.fault_workers import fill_version, ready_then_serve, uniform_model
from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from tests.helpers.worker_side import (
    MUTATIONS,
    aliasing_worker,
    connect_and_report,
    mutated_worker,
    receive_then_connect,
    refusing_reader,
    slow_to_start,
    threaded_reader,
)
from tests.helpers.workers import REPLY_S, ask
from weightsync import SyncTimeoutError, WeightSyncScheme, WorkerRejectedError

pytestmark = pytest.mark.slow


def _start(procs, target, scheme, *args):
    """Start one worker; return the trainer's pipe end and the control pipe once it is up."""
    here, there = procs.pipe()
    ctl_here, ctl_there = procs.pipe()
    procs.start(target, scheme, there, ctl_there, *args)
    there.close()  # the trainer keeps only its own end
    assert ctl_here.poll(REPLY_S), "the worker did not start"
    kind, *payload = ctl_here.recv()
    assert kind == "ready", payload
    return here, ctl_here


def _expect(ctl, kind, timeout=30.0):
    assert ctl.poll(timeout), f"the worker sent no {kind!r} within {timeout} s"
    got, *payload = ctl.recv()
    assert got == kind, (got, payload)
    return payload


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["shared-mem", "pipe"])
def test_a_refusing_worker_keeps_its_weights_under_a_stream_of_sends(procs, backend):
    scheme = WeightSyncScheme.from_backend(backend, strategy="state_dict", timeout=10.0)
    pipe, ctl = _start(procs, refusing_reader, scheme)
    model = uniform_model()
    fill_version(model, 1)
    scheme.init_on_sender("policy", model=model, pipes=[pipe])
    scheme.connect()
    assert _expect(ctl, "misfit") == [1]
    sender = scheme.get_sender()
    sends, refusals = 0, []
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        fill_version(model, sender.version + 1)
        try:
            scheme.send()
        except WorkerRejectedError as err:
            refusals.append(err)
        sends += 1
        assert sender.acked_versions == {0: 1}, "a refused version shows as acknowledged"
        time.sleep(0.002)
    time.sleep(1.0)  # the worker (polling every millisecond) has refused the last version now
    refused = sender.version
    with pytest.raises(WorkerRejectedError, match=r"refused by worker\(s\) \[0\]") as info:
        scheme.send()  # the send after a refusal names the worker and the version refused
    # the last version, or the one just sent (pipe); older if a loaded machine held the worker up
    assert 1 < info.value.version <= refused + 1 and "'extra'" in str(info.value), info.value
    assert sender.acked_versions == {0: 1}
    scheme.shutdown()
    (stats,) = _expect(ctl, "stats")
    assert stats["changed"] == 0 and stats["torn"] == 0, f"the kept weights moved: {stats}"
    assert stats["version"] == 1 and stats["reads"] >= 10, stats
    assert stats["warnings"] == 1, f"the refusal was logged {stats['warnings']} times"
    assert refusals, f"{sends} sends, and the trainer was never told of the refusal"
    assert all(err.workers == [0] and "'extra'" in str(err) for err in refusals), refusals[0]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["shared-mem", "pipe"])
def test_a_slow_first_worker_times_out_connect_and_a_later_send_reaches_it(procs, backend):
    scheme = WeightSyncScheme.from_backend(backend, timeout=2.0)
    here, there = procs.pipe()
    ctl_here, ctl_there = procs.pipe()
    procs.start(slow_to_start, scheme, there, ctl_there, 6.0)  # worker 0: slow
    there.close()
    pipes, controls = [here], [ctl_here]
    pipe, ctl = _start(procs, ready_then_serve, scheme)  # worker 1: ready at once
    pipes.append(pipe)
    controls.append(ctl)
    model = make_model(0)
    scheme.init_on_sender("policy", model=model, pipes=pipes)
    with pytest.raises(SyncTimeoutError) as info:
        scheme.connect()
    assert info.value.workers == [0], info.value
    _expect(controls[0], "ready")  # worker 0 is up now
    sender = scheme.get_sender()
    for step in (1, 2, 3):
        perturb(model, step)
        scheme.send()  # no error: the scheme recovered
    want = state_of(model)
    for w, control in enumerate(controls):
        _, held, state = ask(control, "sync", sender.version, 10.0)
        assert held == sender.version, f"worker {w} holds version {held}"
        assert_same_state(state, want, f"worker {w}")
    assert sender.acked_versions == {0: sender.version, 1: sender.version}
    for control in controls:
        control.send(("stop",))
    scheme.shutdown()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("backend", ["shared-mem", "pipe"])
def test_a_worker_model_changed_after_connect_is_validated_as_it_is_now(procs, backend, mutation):
    scheme = WeightSyncScheme.from_backend(backend, timeout=5.0)
    pipe, ctl = _start(procs, mutated_worker, scheme, mutation)
    model = make_model(0)
    scheme.init_on_sender("policy", model=model, pipes=[pipe])
    scheme.connect()
    _expect(ctl, "mutated")
    refusals, step = [], 0
    deadline = time.monotonic() + 60.0  # a liveness bound: told at once on an idle machine
    while step < 3 or not refusals:  # the shared-mem worker refuses at its next receive()
        assert time.monotonic() < deadline, (
            f"{step} sends, and the trainer was never told that the worker's model no longer fits"
        )
        step += 1
        perturb(model, step)
        try:
            scheme.send()
        except WorkerRejectedError as err:
            refusals.append(err)
        time.sleep(0.1)
    assert all(err.workers == [0] for err in refusals), refusals[0]
    assert scheme.get_sender().acked_versions == {0: 1}
    scheme.shutdown()
    (stats,) = _expect(ctl, "stats")
    assert stats["version"] == 1 and stats["unchanged"], f"the worker's model moved: {stats}"
    assert stats["dtype"] == ("torch.float64" if mutation == "double" else "torch.float32")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["shared-mem", "pipe"])
def test_receive_before_connect_keeps_the_initial_weights_and_connect_returns(procs, backend):
    scheme = WeightSyncScheme.from_backend(backend, timeout=10.0)
    pipe, ctl = _start(procs, receive_then_connect, scheme)
    model = make_model(0)
    scheme.init_on_sender("policy", model=model, pipes=[pipe])
    scheme.connect()
    assert _expect(ctl, "connected") == [1, 1]  # connect() saw the weights receive() applied
    perturb(model, 1)
    scheme.send()
    assert _expect(ctl, "stats") == [2]
    scheme.shutdown()


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("trainer_backend", "worker_backend"), [("pipe", "shared-mem"), ("shared-mem", "pipe")]
)
def test_a_scheme_mismatch_is_named_on_both_sides_at_once(procs, trainer_backend, worker_backend):
    """Named, not waited out: the trainer's timeout is a minute, and neither error is a
    time-out or a dead peer."""
    worker_scheme = WeightSyncScheme.from_backend(worker_backend, timeout=60.0)
    pipe, ctl = _start(procs, connect_and_report, worker_scheme)
    scheme = WeightSyncScheme.from_backend(trainer_backend, timeout=60.0)
    scheme.init_on_sender("policy", model=make_model(0), pipes=[pipe])
    with pytest.raises(WorkerRejectedError, match="scheme") as info:
        scheme.connect()
    assert info.value.workers == [0] and worker_backend in str(info.value), info.value
    assert ctl.poll(30), "the worker did not report"
    kind, error_type, message = ctl.recv()
    assert (kind, error_type) == ("error", "SchemeMismatchError"), message
    assert worker_backend in message and "same scheme" in message, message
    scheme.shutdown()


def _run_with_small_dev_shm(size: str, backend: str) -> subprocess.CompletedProcess | None:
    """Run ``tests.helpers.small_shm`` in a private mount namespace whose /dev/shm is a tmpfs of
    ``size``; None where this process may not make one (not root, no unshare)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return None
    probe = f"{sys.executable} -m tests.helpers.small_shm {backend}"
    script = f"mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {probe}"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    ("backend", "size"),
    [("shared-mem", "6m"), ("pipe", "3m")],  # 3 snapshot buffers of 4 MiB; 1 staging buffer
)
def test_a_too_small_dev_shm_fails_fast_names_the_fix_and_leaves_nothing_behind(backend, size):
    done = _run_with_small_dev_shm(size, backend)
    if done is None or (done.returncode != 0 and "mount" in done.stderr):
        pytest.skip("cannot make a private, small /dev/shm here (needs root and unshare)")
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    trainer_error, message = found["trainer"]
    assert trainer_error == "SharedMemoryError", found
    assert "/dev/shm" in message and "--shm-size" in message, message
    worker_error, worker_message = found["worker"]
    assert worker_error == "SharedMemoryError" and "/dev/shm" in worker_message, found
    assert found["left"] == [], f"left in the private /dev/shm: {found['left']}"


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["shared-mem", "pipe"])
def test_a_second_thread_reading_inside_reading_never_sees_two_versions(procs, backend):
    scheme = WeightSyncScheme.from_backend(backend, strategy="state_dict", timeout=10.0)
    pipe, ctl = _start(procs, threaded_reader, scheme)
    model = uniform_model()
    fill_version(model, 1)
    scheme.init_on_sender("policy", model=model, pipes=[pipe])
    scheme.connect()
    sender = scheme.get_sender()
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        fill_version(model, sender.version + 1)
        scheme.send()
    scheme.shutdown()
    (stats,) = _expect(ctl, "stats")
    assert stats["mixed"] == 0, f"the reading thread saw two versions at once: {stats}"
    assert stats["reads"] >= 10 and stats["version"] >= 2, stats


@pytest.mark.timeout(90)
def test_a_shared_mem_worker_writing_its_adopted_weights_cannot_change_what_others_read(procs):
    scheme = WeightSyncScheme.from_backend("shared-mem", strategy="state_dict", timeout=10.0)
    (pipe0, ctl0), (pipe1, ctl1) = (_start(procs, aliasing_worker, scheme) for _ in range(2))
    model = uniform_model()
    fill_version(model, 1)
    scheme.init_on_sender("policy", model=model, pipes=[pipe0, pipe1])
    scheme.connect()  # both workers now point into the same snapshot
    writer = procs.processes[0]
    ctl0.send(("write",))
    writer.join(30)
    assert writer.exitcode == -signal.SIGSEGV, "the write into the shared snapshot went through"
    assert ask(ctl1, "read") == ("read", 1.0, 1.0, 1), "another worker's write reached worker 1"
    ctl1.send(("stop",))
    scheme.get_sender().remove_workers([0])
    scheme.shutdown()


@pytest.mark.timeout(90)
def test_apply_weights_in_a_shared_mem_worker_changes_that_worker_only(procs):
    scheme = WeightSyncScheme.from_backend("shared-mem", strategy="state_dict", timeout=10.0)
    (pipe0, ctl0), (pipe1, ctl1) = (_start(procs, aliasing_worker, scheme) for _ in range(2))
    model = uniform_model()
    fill_version(model, 1)
    scheme.init_on_sender("policy", model=model, pipes=[pipe0, pipe1])
    scheme.connect()
    assert ask(ctl0, "apply") == ("applied",)
    assert ask(ctl0, "read") == ("read", 0.0, 0.0, 1)
    assert ask(ctl1, "read") == ("read", 1.0, 1.0, 1), "worker 0's apply reached worker 1"
    fill_version(model, 2)
    scheme.send()  # worker 0 takes updates again after its own apply
    for w, ctl in enumerate((ctl0, ctl1)):
        deadline = time.monotonic() + 10.0
        while (read := ask(ctl, "read"))[3] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read == ("read", 2.0, 2.0, 2), f"worker {w}: {read}"
        ctl.send(("stop",))
    scheme.shutdown()
