"""The distributed scheme with real spawned workers over a gloo group on loopback."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.helpers.distributed_workers import serve_broadcasts
from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from tests.helpers.workers import expect_reply
from weightsync import DistributedWeightSyncScheme, WorkerRejectedError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize("strategy", ["state_dict", "tensordict"])
def test_broadcast_reaches_every_worker_exactly_on_a_private_group(procs, strategy):
    num_workers = 2
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(num_workers=num_workers, strategy=strategy, timeout=30)
    scheme.init_on_sender("policy", model=trainer_model)
    assert scheme.port > 0  # picked a free port: the pickled scheme carries it to the workers
    controls = []
    for w in range(num_workers):
        here, there = procs.pipe()
        procs.start(serve_broadcasts, scheme, w, there)
        controls.append(here)
    scheme.connect()
    for ctl in controls:  # the initial weights
        _, version, state, default_group = expect_reply(ctl, "report")
        assert version == 1
        assert_same_state(state, state_of(trainer_model))
        assert not default_group, "the scheme must not initialise the default process group"
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
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=30)
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


def test_given_weights_reach_the_worker_and_never_the_trainers_model(procs):
    """The trainer's model lives in the broadcast buffer (bind_source): weights passed to
    ``send()`` must be broadcast from a buffer of their own, not written over the model."""
    trainer_model = make_model(seed=0)
    scheme = DistributedWeightSyncScheme(num_workers=1, timeout=30)
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
