"""What a trainer hands ``send``: it goes to the workers as given, or is refused before anything
moves, and never touches the trainer's own model.

Each case runs against real spawned workers (pipe and shared-mem): after a send of given weights
the trainer's model is exactly as it was; after a refused or failed send the sender's version did
not move and every worker still holds the last good version. Weights on the meta device (or a
meta model, on either side) are refused with an error naming the keys, never a silent no-op.
"""

from __future__ import annotations

import pytest
import torch

from tests.helpers.fault_workers import meta_worker
from tests.helpers.fleet import NUM_WORKERS, Fleet
from tests.helpers.models import (
    TiedEmbedding,
    assert_same_state,
    make_model,
    perturb,
    state_of,
)
from tests.helpers.spawned import serve_models
from tests.helpers.workers import REPLY_S, ask
from weightsync import UnmaterializedWeightsError, WeightSyncScheme, WorkerRejectedError

# the module-scoped fleets are spawned once: every test here on one xdist worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sender_fleet")]


@pytest.fixture(scope="module", params=["pipe", "shared-mem"])
def fleet(request):
    fleet = Fleet(request.param, reject_non_finite=False)
    yield fleet
    fleet.close()


def _other_values() -> dict:
    """Weights of the trainer's architecture with other values (another model's weights)."""
    return state_of(make_model(7))


def _with_nan() -> dict:
    weights = _other_values()
    weights["head.weight"][0, 0] = float("nan")
    return weights


def _non_contiguous() -> dict:
    weights = _other_values()
    weights["head.weight"] = weights["head.weight"].t().contiguous().t()
    assert not weights["head.weight"].is_contiguous()
    return weights


def _same(got, want) -> bool:
    """Equal values (NaN equal to NaN), or equal objects (extra state)."""
    if not torch.is_tensor(want):
        return got == want
    return torch.equal(got.isnan(), want.isnan()) and torch.equal(
        got.nan_to_num(), want.nan_to_num()
    )


GIVEN = {
    "another model's weights": _other_values,
    "NaN": _with_nan,
    "non-contiguous": _non_contiguous,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(GIVEN))
def test_given_weights_reach_the_workers_and_never_the_trainers_model(fleet, name):
    trainer_before = state_of(fleet.model)
    given = GIVEN[name]()
    fleet.scheme.send(given)
    assert_same_state(state_of(fleet.model), trainer_before, "the trainer's model")
    version = fleet.sender.version
    for w, (held, state) in enumerate(fleet.worker_states(version)):
        assert held == version, f"worker {w} holds version {held}, not {version}"
        for key, want in given.items():
            assert _same(state[key], want), f"worker {w}: {key} is not what was sent"

    fleet.scheme.send()  # and the trainer's own weights still go out as they are
    fleet.assert_workers_hold(fleet.sender.version, trainer_before)


@pytest.mark.timeout(120)
def test_a_send_that_fails_midway_changes_nothing_and_spends_no_version(fleet):
    perturb(fleet.model, 1)
    fleet.scheme.send()
    version, trainer_before = fleet.sender.version, state_of(fleet.model)
    given = _other_values()
    given["_extra_state"] = {"updates": "x" * 100_000}  # more than the room laid out for it
    with pytest.raises(ValueError, match="extra state grew"):
        fleet.scheme.send(given)  # fails after the tensors were staged
    assert fleet.sender.version == version, "a failed send spent a version"
    assert_same_state(state_of(fleet.model), trainer_before, "the trainer's model")
    fleet.assert_workers_hold(version, trainer_before)
    assert set(fleet.sender.acked_versions.values()) == {version}
    assert len(fleet.sender.acked_versions) == NUM_WORKERS

    perturb(fleet.model, 1)  # still usable
    fleet.scheme.send()
    fleet.assert_workers_hold(fleet.sender.version, state_of(fleet.model))


# ---------------------------------------------------------------------- the meta device
@pytest.mark.timeout(120)
def test_meta_weights_are_refused_naming_the_keys_and_spend_no_version(fleet):
    version, trainer_before = fleet.sender.version, state_of(fleet.model)
    meta = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in _other_values().items()}
    with pytest.raises(UnmaterializedWeightsError, match="meta device") as info:
        fleet.scheme.send(meta)
    assert "'head.weight'" in str(info.value) and "'policy'" in str(info.value)
    assert fleet.sender.version == version, "a refused send spent a version"
    assert_same_state(state_of(fleet.model), trainer_before, "the trainer's model")
    fleet.assert_workers_hold(version, trainer_before)

    perturb(fleet.model, 1)  # still usable
    fleet.scheme.send()
    fleet.assert_workers_hold(fleet.sender.version, state_of(fleet.model))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["pipe", "shared-mem"])
def test_a_meta_trainer_model_is_refused_before_anything_is_sent(procs, backend):
    here, _there = procs.pipe()
    scheme = WeightSyncScheme.from_backend(backend, timeout=2.0)
    scheme.init_on_sender("policy", model=make_model(0).to("meta"), pipes=[here])
    try:
        for call in (scheme.connect, scheme.send):
            with pytest.raises(UnmaterializedWeightsError, match=r"'encoder\.0\.weight'"):
                call()
        assert scheme.get_sender().version == 0
        assert not _there.poll(0.2), "something was sent to the worker"
    finally:
        scheme.shutdown()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["pipe", "shared-mem"])
def test_a_meta_worker_model_refuses_the_weights_and_keeps_version_0(procs, backend):
    """Writing into a meta tensor does nothing: an update 'applied' to it would be a silent
    no-op with a version that lies. The worker refuses it, naming the keys; the trainer is told."""
    scheme = WeightSyncScheme.from_backend(backend, timeout=10.0)
    here, there = procs.pipe()
    ctl_here, ctl_there = procs.pipe()
    procs.start(meta_worker, scheme, there, ctl_there)
    assert ctl_here.poll(REPLY_S) and ctl_here.recv()[0] == "ready"
    scheme.init_on_sender("policy", model=make_model(0), pipes=[here])
    try:
        with pytest.raises(WorkerRejectedError, match="meta device") as info:
            scheme.connect()
        assert info.value.workers == [0]
        assert ctl_here.poll(REPLY_S)
        kind, *report = ctl_here.recv()
        assert kind == "refused", report
        error, message, version = report
        assert error == "WeightMismatchError" and "'head.weight'" in message, report
        assert version == 0, "the worker claims a version it does not hold"
    finally:
        scheme.shutdown()


# ---------------------------------------------------------------------- tied parameters
@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["pipe", "shared-mem"])
def test_a_state_dict_of_a_model_with_tied_parameters_is_accepted(procs, backend):
    """``module.state_dict()`` lists a tied tensor under every name; the format is documented as
    "like module.state_dict()", so it is sent as the one tensor it is, and stays tied."""
    torch.manual_seed(0)
    trainer = TiedEmbedding()
    assert "head.weight" in trainer.state_dict() and "embed.weight" in trainer.state_dict()
    scheme = WeightSyncScheme.from_backend(backend, strategy="state_dict", timeout=30.0)
    here, there = procs.pipe()
    ctl, ctl_there = procs.pipe()
    scheme.init_on_sender("policy", model=trainer, pipes=[here])
    torch.manual_seed(1)
    procs.start(
        serve_models, {"policy": scheme}, {"policy": there}, {"policy": TiedEmbedding()}, ctl_there
    )
    assert ctl.poll(REPLY_S) and ctl.recv()[0] == "unpickled"
    try:
        scheme.connect()
        with torch.no_grad():
            trainer.embed.weight.mul_(-2)
        scheme.send(trainer.state_dict())
        version = scheme.get_sender().version
        _, held, states = ask(ctl, "state", 30.0, {"policy": version})
        assert held == {"policy": version}
        assert_same_state(states["policy"], state_of(trainer), "the worker")
        ctl.send(("stop",))
    finally:
        scheme.shutdown()
