"""The distributed scheme with real spawned workers over a gloo group on loopback."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
import torch
import torch.distributed as dist

from tests.helpers.distributed_workers import (
    cpu_seconds,
    exit_without_shutdown,
    local_addresses,
    run_trainer,
    serve_broadcasts,
    serve_commands,
)
from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from tests.helpers.workers import ask, expect_reply
from weightsync import (
    DistributedWeightSyncScheme,
    PeerDiedError,
    SyncTimeoutError,
    WorkerRejectedError,
)
from weightsync.schemes.distributed import SILENT_HEARTBEATS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
# How long the trainer waits for spawned workers to join: a liveness bound (each imports torch
# first; a loaded 2-core machine has taken over a minute), never what a test measures.
JOIN_S = 150.0


@pytest.mark.parametrize("strategy", ["state_dict", "tensordict"])
def test_broadcast_reaches_every_worker_exactly_on_a_private_group(procs, strategy):
    num_workers = 2
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(
        num_workers=num_workers, strategy=strategy, timeout=30, join_timeout=JOIN_S
    )
    scheme.init_on_sender("policy", model=trainer_model)
    assert scheme.port > 0  # picked a free port: the pickled scheme carries it to the workers
    controls = []
    for w in range(num_workers):
        here, there = procs.pipe()
        procs.start(serve_broadcasts, scheme, w, there)
        controls.append(here)
    scheme.connect()
    for ctl in controls:  # the initial weights
        _, version, state, facts = expect_reply(ctl, "report")
        assert version == 1
        assert_same_state(state, state_of(trainer_model))
        assert not facts["default_group"], "the scheme must not initialise the default group"
    for step in range(2, 5):
        perturb(trainer_model, step)
        scheme.send()
        assert scheme.get_sender().acked_versions == dict.fromkeys(range(num_workers), step)
        for ctl in controls:
            _, version, state, _ = expect_reply(ctl, "report")
            assert version == step
            assert_same_state(state, state_of(trainer_model))
    assert not dist.is_initialized()
    scheme.shutdown()
    for ctl in controls:
        assert expect_reply(ctl, "report") == ("closed",)


def test_a_misfit_update_is_refused_and_the_worker_keeps_its_weights(procs):
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=30, join_timeout=JOIN_S)
    scheme.init_on_sender("policy", model=trainer_model)
    here, there = procs.pipe()
    procs.start(serve_broadcasts, scheme, 0, there)
    scheme.connect()
    _, _, before, _ = expect_reply(here, "report")
    wrong = {
        k: v.double() if v.is_floating_point() else v
        for k, v in trainer_model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }
    wrong["_extra_state"] = {"updates": 7}
    with pytest.raises(WorkerRejectedError, match="worker") as info:
        scheme.send(wrong)
    assert info.value.workers == [0]
    assert "float64" in str(info.value) and "float32" in str(info.value)
    perturb(trainer_model, 1)
    scheme.send()  # the worker is still usable: the next good update lands
    _, version, state, _ = expect_reply(here, "report")
    assert version == 3
    assert_same_state(state, state_of(trainer_model))
    assert not torch.equal(state["head.weight"], before["head.weight"])
    scheme.shutdown()
    assert expect_reply(here, "report") == ("closed",)


def _start_workers(procs, scheme, binds):
    controls = []
    for w, bind in enumerate(binds):
        here, there = procs.pipe()
        controls.append((procs.start(serve_commands, scheme, w, bind, there), here))
    return controls


def test_workers_bind_their_own_addresses_not_the_trainers(procs):
    """Distinct loopback addresses stand in for hosts: the store listens on 127.0.0.1 only,
    each worker's link binds the worker's own address."""
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(
        num_workers=2, host="127.0.0.1", timeout=30, join_timeout=JOIN_S
    )
    scheme.init_on_sender("policy", model=trainer_model)
    with pytest.raises(OSError):  # the store listens on the address it was given, only there
        socket.create_connection(("127.0.0.2", scheme.port), timeout=5).close()
    workers = _start_workers(procs, scheme, ["127.0.0.2", "127.0.0.3"])
    scheme.connect()
    perturb(trainer_model, 1)
    scheme.send()
    for (process, ctl), address in zip(workers, ["127.0.0.2", "127.0.0.3"], strict=True):
        expect_reply(ctl, "report")
        _, version, state = ask(ctl, "receive", 5.0)
        assert version == 2
        assert_same_state(state, state_of(trainer_model))
        assert address in local_addresses(process.pid)
    # Rendezvous keys go once each link is up: the store keeps nothing per worker or version.
    assert scheme._transport.store.list_keys() == []
    scheme.shutdown()
    for _, ctl in workers:
        assert ask(ctl, "stop") == ("closed",)


def test_a_worker_busy_for_three_timeouts_neither_stalls_sends_nor_is_called_dead(procs):
    """The worker stays in its rollout until the test releases it, so the sends provably
    complete while it is busy however loaded the machine; it is released only after three
    timeouts, and is then neither dead nor behind."""
    timeout = 2.0  # a send's bound: the worker's receiving thread takes it meanwhile
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=timeout, join_timeout=JOIN_S)
    scheme.init_on_sender("policy", model=trainer_model)
    [(_, ctl)] = _start_workers(procs, scheme, [None])
    scheme.connect()
    expect_reply(ctl, "report")
    assert ask(ctl, "busy") == ("busy",)
    busy_since = time.monotonic()
    for step in (1, 2):  # both complete while the worker acts: its receiving thread has them
        perturb(trainer_model, step)
        scheme.send()
    assert scheme.get_sender().acked_versions == {0: 1}  # it holds version 1 until it adopts
    time.sleep(max(0.0, busy_since + 3 * timeout - time.monotonic()))
    ctl.send(("rest",))
    assert expect_reply(ctl, "finish its rollout") == ("done",)
    _, version, state = ask(ctl, "receive", 0.0)
    assert version == 3  # the newest complete version, adopted without waiting
    assert_same_state(state, state_of(trainer_model))
    scheme.shutdown()
    assert ask(ctl, "stop") == ("closed",)


def test_a_killed_worker_is_named_and_the_survivors_keep_receiving(procs):
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(num_workers=2, timeout=30, join_timeout=JOIN_S)
    scheme.init_on_sender("policy", model=trainer_model)
    workers = _start_workers(procs, scheme, [None, None])
    scheme.connect()
    for _, ctl in workers:
        expect_reply(ctl, "report")
    victim, _ = workers[1]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    with pytest.raises(PeerDiedError, match="worker 1") as info:
        scheme.send()  # named from its broken connection, long before the 30 s timeout
    assert info.value.workers == [1]
    scheme.get_sender().remove_workers([1])
    perturb(trainer_model, 1)
    scheme.send()
    _, ctl = workers[0]
    _, version, state = ask(ctl, "receive", 5.0)
    assert version == 3
    assert_same_state(state, state_of(trainer_model))
    scheme.shutdown()
    assert ask(ctl, "stop") == ("closed",)


def _trainer_process(procs, num_workers: int, timeout: float, heartbeat: float = 5.0):
    """A trainer in a process of its own (so it can be killed or stopped), and the scheme its
    workers are built from: ``(process, control pipe, scheme)``."""
    trainer_ctl, there = procs.pipe()
    trainer = procs.start(run_trainer, num_workers, timeout, there, heartbeat)
    _, port = expect_reply(trainer_ctl, "pick a port")
    scheme = DistributedWeightSyncScheme(
        num_workers=num_workers,
        port=port,
        timeout=timeout,
        join_timeout=JOIN_S,
        heartbeat=heartbeat,
    )
    return trainer, trainer_ctl, scheme


def test_every_worker_exits_when_the_trainer_is_killed(procs):
    timeout = 10.0
    trainer, trainer_ctl, scheme = _trainer_process(procs, 2, timeout)
    workers = _start_workers(procs, scheme, [None, None])
    assert expect_reply(trainer_ctl, "connect") == ("connected",)
    for _, ctl in workers:
        expect_reply(ctl, "report")
        ctl.send(("follow",))
    os.kill(trainer.pid, signal.SIGKILL)
    for process, ctl in workers:  # liveness bounds: a dead link is seen at once when idle
        reply = expect_reply(ctl, "notice the trainer died", timeout=30)
        assert reply[:2] == ("gone", "PeerDiedError"), reply
        process.join(30)
        assert process.exitcode == 0


@pytest.mark.parametrize("trainer", ["killed", "alive"])
def test_a_worker_exiting_without_shutdown_ends_its_receiving_thread_first(procs, trainer):
    """A daemon thread still running while the interpreter finalises aborts the process
    ("terminate called without an active exception"): the receiver is closed at exit."""
    trainer_process, trainer_ctl, scheme = _trainer_process(procs, 1, 10.0)
    ctl, there = procs.pipe()
    worker = procs.start(exit_without_shutdown, scheme, 0, there)
    assert expect_reply(trainer_ctl, "connect") == ("connected",)
    assert expect_reply(ctl, "join") == ("state", 1)
    if trainer == "killed":
        os.kill(trainer_process.pid, signal.SIGKILL)
    ctl.send(("exit", trainer == "killed"))  # alive: return at once, the trainer still serving
    assert expect_reply(ctl, "exit", timeout=30) == ("threads", [])  # liveness bounds
    worker.join(30)
    assert worker.exitcode == 0
    if trainer == "alive":  # the worker said it left: the trainer's next send names it
        trainer_ctl.send(("send",))
        assert trainer_ctl.poll(30)
        kind, error, message = trainer_ctl.recv()
        assert (kind, error) == ("error", "PeerDiedError") and "worker 0" in message, message


def test_a_worker_notices_a_trainer_gone_silent_by_its_missing_heartbeats(procs):
    """A trainer host that loses power closes no socket: nothing tells the workers. SIGSTOP
    stands in for it. While the trainer lives, its heartbeats keep an idle worker waiting."""
    heartbeat = 1.0  # a loaded machine may stall the trainer's heartbeat thread for a second
    trainer, trainer_ctl, scheme = _trainer_process(procs, 1, 10.0, heartbeat)
    [(_, ctl)] = _start_workers(procs, scheme, [None])
    assert expect_reply(trainer_ctl, "connect") == ("connected",)
    expect_reply(ctl, "report")
    ctl.send(("follow",))
    silence = SILENT_HEARTBEATS * heartbeat
    assert not ctl.poll(1.5 * silence), "the worker gave up on a live, idle trainer"
    os.kill(trainer.pid, signal.SIGSTOP)
    try:
        kind, error, message = expect_reply(ctl, "notice the silence", timeout=30)
    finally:
        os.kill(trainer.pid, signal.SIGKILL)
    assert (kind, error) == ("gone", "PeerDiedError")
    assert f"heard nothing from the trainer for {silence:g} s" in message, message


def test_an_idle_link_outlives_the_join_timeout_and_sends_are_not_hoarded(procs):
    """gloo ends a bare wait at the group's creation timeout (closing the link) and reports a
    send complete only once waited for: an idle worker must not die after ``join_timeout``, and
    the trainer must not keep every send it ever made."""
    trainer_model = make_model(seed=0)
    join_timeout = 6.0  # long enough for the worker to start; the idle time is twice that
    scheme = DistributedWeightSyncScheme(
        num_workers=1, timeout=10, join_timeout=join_timeout, heartbeat=0
    )
    scheme.init_on_sender("policy", model=trainer_model)
    [(_, ctl)] = _start_workers(procs, scheme, [None])
    scheme.connect()
    expect_reply(ctl, "report")
    time.sleep(2 * join_timeout)  # idle, no heartbeat, longer than the join timeout both sides
    for step in range(2, 32):
        perturb(trainer_model, step)
        scheme.send()
    _, version, state = ask(ctl, "receive", 5.0)
    assert version == 31
    assert_same_state(state, state_of(trainer_model))
    assert len(scheme.get_sender().transport.links[0].pending) == 0
    scheme.shutdown()
    assert ask(ctl, "stop") == ("closed",)


def test_heartbeats_to_an_idle_worker_are_collected_not_hoarded(procs):
    heartbeat = 0.1
    scheme = DistributedWeightSyncScheme(
        num_workers=1, timeout=30, heartbeat=heartbeat, join_timeout=JOIN_S
    )
    scheme.init_on_sender("policy", model=make_model(seed=0))
    [(_, ctl)] = _start_workers(procs, scheme, [None])
    scheme.connect()
    expect_reply(ctl, "report")
    link = scheme.get_sender().transport.links[0]
    # Hoarded, the pending sends would grow with every beat; collected, they shrink back to at
    # most the newest beat (its echo on its way) as soon as the worker's echoes are read. A
    # loaded machine may delay an echo past the next beat, so the test looks until it sees it.
    deadline = time.monotonic() + 60.0  # a liveness bound: 20 beats take 2 s on an idle machine
    while not (link.beats >= 20 and len(link.pending) <= 1):
        assert time.monotonic() < deadline, (
            f"{len(link.pending)} heartbeats of {link.beats} still pending after 60 s"
        )
        time.sleep(heartbeat / 2)
    scheme.shutdown()
    assert ask(ctl, "stop") == ("closed",)


def test_an_idle_worker_costs_no_measurable_cpu(procs):
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=30, join_timeout=JOIN_S)
    scheme.init_on_sender("policy", model=make_model(seed=0))
    [(process, ctl)] = _start_workers(procs, scheme, [None])
    scheme.connect()
    expect_reply(ctl, "report")
    ctl.send(("follow",))  # receive(0.5) in a loop: the idle state of a real worker
    time.sleep(0.5)
    before = cpu_seconds(process.pid)
    time.sleep(2.0)
    used = cpu_seconds(process.pid) - before
    assert used < 0.1, f"an idle worker used {used:.2f} s of CPU in 2 s"
    scheme.shutdown()
    assert expect_reply(ctl, "see the trainer close") == ("gone", "closed", "")


def test_bind_takes_an_interface_name(procs):
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=30, bind="lo", join_timeout=JOIN_S)
    scheme.init_on_sender("policy", model=trainer_model)
    [(process, ctl)] = _start_workers(procs, scheme, ["lo"])
    scheme.connect()
    _, version, state = expect_reply(ctl, "report")
    assert version == 1
    assert_same_state(state, state_of(trainer_model))
    assert local_addresses(process.pid) == {"127.0.0.1"}  # lo's address
    scheme.shutdown()
    assert ask(ctl, "stop") == ("closed",)


def test_without_bind_gloo_socket_ifname_is_honoured(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "nosuch0")
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=5)
    scheme.init_on_sender("policy", model=make_model(seed=0))
    with pytest.raises(SyncTimeoutError, match="nosuch0") as info:
        scheme.connect()  # the trainer's own link cannot bind the interface it was told to use
    assert info.value.workers == [0]
    scheme.shutdown()


def test_a_stopped_worker_is_named_after_the_timeout_and_catches_up_when_resumed(procs):
    trainer_model = make_model(seed=0)
    # the stopped worker is waited for this long; the running one must take a send within it
    scheme = DistributedWeightSyncScheme(num_workers=2, timeout=4.0, join_timeout=JOIN_S)
    scheme.init_on_sender("policy", model=trainer_model)
    workers = _start_workers(procs, scheme, [None, None])
    scheme.connect()
    for _, ctl in workers:
        expect_reply(ctl, "report")
    stopped, ctl = workers[1]
    os.kill(stopped.pid, signal.SIGSTOP)  # hung: alive, but its receiving thread cannot answer
    try:
        perturb(trainer_model, 1)
        with pytest.raises(SyncTimeoutError, match="worker 1 did not receive version 2") as info:
            scheme.send()
        assert info.value.workers == [1]
        assert scheme.get_sender().acked_versions == {0: 1, 1: None}  # 0 adopts 2 at receive()
        perturb(trainer_model, 2)  # the stopped worker may still read version 2's buffer...
    finally:
        os.kill(stopped.pid, signal.SIGCONT)
    scheme.send()  # ...so version 3 went out from a fresh one; both workers now hold it
    for _, ctl in workers:
        _, version, state = ask(ctl, "receive", 5.0)
        assert version == 3
        assert_same_state(state, state_of(trainer_model))
    scheme.shutdown()
    for _, ctl in workers:
        assert ask(ctl, "stop") == ("closed",)


def test_given_weights_reach_the_worker_and_never_the_trainers_model(procs):
    """The trainer's model lives in the broadcast buffer (bind_source): weights passed to
    ``send()`` must be broadcast from a buffer of their own, not written over the model."""
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=30, join_timeout=JOIN_S)
    scheme.init_on_sender("policy", model=trainer_model)
    here, there = procs.pipe()
    procs.start(serve_broadcasts, scheme, 0, there)
    scheme.connect()
    expect_reply(here, "report")
    trainer_before = state_of(trainer_model)
    given = state_of(make_model(seed=7))
    scheme.send(given)
    assert_same_state(state_of(trainer_model), trainer_before, "the trainer's model")
    _, version, state, _ = expect_reply(here, "report")
    assert version == 2
    assert_same_state(state, given, "the worker")
    perturb(trainer_model, 1)
    scheme.send()  # and the model's own weights still go out from where it lives
    _, version, state, _ = expect_reply(here, "report")
    assert version == 3
    assert_same_state(state, state_of(trainer_model), "the worker")
    scheme.shutdown()
    assert expect_reply(here, "report") == ("closed",)
