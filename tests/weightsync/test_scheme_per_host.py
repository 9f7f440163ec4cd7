"""The distributed scheme's per-host fan-out with real spawned workers on loopback: explicit
``host_id``s stand in for hosts here (the two-namespace tests in test_hosts_netns.py use real
ones). Trainer and worker 0 on host "a"; workers 1 and 2 on host "b", worker 1 its relay."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from tests.helpers.distributed_workers import serve_broadcasts
from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from tests.helpers.workers import expect_reply
from weightsync import DistributedWeightSyncScheme, PeerDiedError, WorkerRejectedError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
HOSTS = ["a", "b", "b"]


def _start(procs, timeout: float = 30.0):
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(
        num_workers=len(HOSTS),
        topology="per_host",
        host_id="a",
        timeout=timeout,
        join_timeout=120,
    )
    scheme.init_on_sender("policy", model=trainer_model)
    workers = []
    for w, host in enumerate(HOSTS):
        here, there = procs.pipe()
        workers.append((procs.start(serve_broadcasts, scheme, w, there, 1, "cpu", host), here))
    scheme.connect()
    for _, ctl in workers:
        _, version, state, _ = expect_reply(ctl, "initial weights")
        assert version == 1
        assert_same_state(state, state_of(trainer_model))
    return scheme, trainer_model, workers


def test_each_host_gets_one_copy_and_every_worker_the_exact_weights(procs):
    scheme, trainer_model, workers = _start(procs)
    sender = scheme.get_sender().transport
    assert sender.relays == {1: [1, 2]}  # host b: worker 1 takes the update off the network
    assert sender.local.readers == [0]  # host a: worker 0 reads the trainer's own snapshots
    for step in range(2, 5):
        perturb(trainer_model, step)
        scheme.send()
        assert scheme.get_sender().acked_versions == dict.fromkeys(range(3), step)
        for _, ctl in workers:
            _, version, state, _ = expect_reply(ctl, "update")
            assert version == step
            assert_same_state(state, state_of(trainer_model))
    scheme.shutdown()
    for _, ctl in workers:
        assert expect_reply(ctl, "close") == ("closed",)


def test_a_refusal_is_named_by_worker_and_every_worker_keeps_its_weights(procs):
    scheme, trainer_model, workers = _start(procs)
    state = trainer_model.state_dict()
    wrong = {k: v.double() if v.is_floating_point() else v
             for k, v in state.items() if isinstance(v, torch.Tensor)}  # fmt: skip
    with pytest.raises(WorkerRejectedError, match="float64") as info:
        scheme.send(wrong)
    assert info.value.workers == [0, 1, 2]  # each validated the snapshot itself
    perturb(trainer_model, 1)
    scheme.send()  # still usable: the next good update lands everywhere
    for _, ctl in workers:
        _, version, state, _ = expect_reply(ctl, "update")
        assert version == 3
        assert_same_state(state, state_of(trainer_model))
    scheme.shutdown()


def test_a_dead_relay_is_named_with_the_workers_it_served_who_stop_with_a_clear_error(procs):
    scheme, trainer_model, workers = _start(procs, timeout=10.0)
    relay, _ = workers[1]
    os.kill(relay.pid, signal.SIGKILL)
    relay.join(10)
    perturb(trainer_model, 1)
    with pytest.raises(PeerDiedError) as info:
        scheme.send()
    assert info.value.workers == [1, 2], info.value
    # The trainer names worker 2 as served by the dead relay, or as gone already: worker 2
    # noticed the relay's death first and stopped.
    assert any(why in str(info.value) for why in ("served by worker 1", "worker 2 has shut"))
    _, reader_ctl = workers[2]
    assert reader_ctl.poll(15), "the reader did not stop"
    kind, error_type, message = reader_ctl.recv()[:3]
    assert (kind, error_type) == ("error", "PeerDiedError"), message
    assert "worker 1, this host's relay" in message
    scheme.get_sender().remove_workers([1, 2])
    perturb(trainer_model, 2)
    scheme.send()  # the trainer's own host is untouched
    version = 0
    while version < 3:  # the failed send still reached worker 0 (version 2)
        _, version, state, _ = expect_reply(workers[0][1], "update")
    assert_same_state(state, state_of(trainer_model))
    scheme.shutdown()
