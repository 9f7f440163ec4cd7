"""ModelGroup: several models under one model id, applied by each worker all or nothing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tests.helpers.models import make_model, perturb, state_of
from tests.helpers.spawned import serve_models
from tests.helpers.workers import ask
from weightsync import (
    ModelGroup,
    WeightMismatchError,
    WeightStrategy,
    WeightSyncScheme,
    WorkerRejectedError,
)


def group(critic_out: int = 1, seed: int = 0) -> ModelGroup:
    torch.manual_seed(seed)
    return ModelGroup({"policy": make_model(seed), "critic": nn.Linear(4, critic_out)})


def test_a_group_refers_to_its_members_without_copying():
    policy, critic = nn.Linear(4, 2), nn.Linear(4, 1)
    bundle = ModelGroup({"policy": policy, "critic": critic})
    assert bundle.policy is policy and bundle.critic is critic
    assert sorted(bundle.state_dict()) == [
        "critic.bias",
        "critic.weight",
        "policy.bias",
        "policy.weight",
    ]


def test_a_group_is_built_from_paths_on_a_context():
    ctx = SimpleNamespace(policy=nn.Linear(4, 2), models={"critic": nn.Linear(4, 1)})
    bundle = ModelGroup.from_context(ctx, {"policy": "policy", "critic": 'models["critic"]'})
    assert bundle.critic is ctx.models["critic"]


@pytest.mark.parametrize(
    ("members", "error", "match"),
    [
        ({"policy": "not a module"}, TypeError, "member 'policy' is a str"),
        ({"a.b": nn.Linear(1, 1)}, ValueError, "must be non-empty with no '.'"),
        ({"": nn.Linear(1, 1)}, ValueError, "must be non-empty"),
    ],
)
def test_bad_members_are_refused(members, error, match):
    with pytest.raises(error, match=match):
        ModelGroup(members)


def test_calling_a_group_says_to_call_a_member():
    with pytest.raises(RuntimeError, match="call a member"):
        group()(torch.zeros(1, 4))


@pytest.mark.parametrize("fmt", ["state_dict", "tensordict"])
def test_applying_a_group_is_all_or_nothing(fmt):
    strategy = WeightStrategy(fmt)
    source, misfit = group(seed=0), group(critic_out=3, seed=1)
    perturb(source.policy, 2)
    before = state_of(misfit)
    with pytest.raises(WeightMismatchError, match=r"critic\.weight"):
        strategy.apply_weights(misfit, strategy.extract_weights(source))
    after = state_of(misfit)
    for key, value in before.items():  # the policy fits, but was not written either
        if isinstance(value, torch.Tensor):
            assert torch.equal(after[key], value), key
    assert misfit.policy.updates == 0


def _expect(ctl, kind, timeout=60.0):
    assert ctl.poll(timeout), f"worker sent no {kind!r}"
    reply = ctl.recv()
    assert reply[0] == kind, reply
    return reply


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("backend", ["pipe", "shared-mem"])
def test_a_group_update_is_applied_all_or_nothing_in_each_worker(procs, backend):
    """Worker 1's critic has another shape: every update of the group is refused there (its
    policy and critic both unchanged), named in the trainer's error, while worker 0 applies it."""
    trainer_group = group(seed=0)
    scheme = WeightSyncScheme.from_backend(backend, timeout=30.0)
    pipes, controls = [], []
    for worker in range(2):
        trainer_end, worker_end = procs.pipe()
        ctl_here, ctl_there = procs.pipe()
        worker_group = group(critic_out=3 if worker == 1 else 1, seed=1)
        procs.start(
            serve_models,
            {"models": scheme},
            {"models": worker_end},
            {"models": worker_group},
            ctl_there,
        )
        pipes.append(trainer_end)
        controls.append(ctl_here)
    for ctl in controls:
        _expect(ctl, "unpickled")
    initial = state_of(group(critic_out=3, seed=1))
    scheme.init_on_sender("models", model=trainer_group, pipes=pipes)
    with pytest.raises(WorkerRejectedError, match=r"refused by worker\(s\) \[1\]") as info:
        scheme.connect()
    assert info.value.workers == [1] and "critic.weight" in str(info.value)
    _, model_id, message = _expect(controls[1], "refused")
    assert model_id == "models" and "WeightMismatchError" in message
    for step in (1, 2):
        perturb(trainer_group.policy, step)
        with torch.no_grad():
            trainer_group.critic.weight.add_(step)
        with pytest.raises(WorkerRejectedError, match=r"worker\(s\) \[1\]"):
            scheme.send()
        version = scheme.get_sender().version
        _, held, states = ask(controls[0], "state", 30.0, {"models": version})
        assert held["models"] == version
        want = state_of(trainer_group)
        for key, value in want.items():
            got = states["models"][key]
            assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
        _, held, states = ask(controls[1], "state", 0.2, {"models": version})
        assert held["models"] == 0
        for key, value in initial.items():
            got = states["models"][key]
            assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
    assert scheme.get_sender().acked_versions[1] is None
    for ctl in controls:
        ctl.send(("stop",))
    scheme.shutdown()
