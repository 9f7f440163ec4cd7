"""Several models synchronised side by side: one scheme per model id, in the same spawned worker
processes, each updated on its own. The schemes are initialised on the trainer *before* they are
pickled to the workers, so this also checks that runtime state is dropped and rebuilt there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from tests.helpers.spawned import serve_models
from tests.helpers.workers import REPLY_S, ask
from weightsync import WeightSyncScheme

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

POLICY, CRITIC = "policy", 'models["critic"]'


def _critic(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))


def test_two_models_side_by_side_in_the_same_workers(procs):
    trainer = {POLICY: make_model(0), CRITIC: _critic(0)}
    schemes = {
        POLICY: WeightSyncScheme.from_backend("pipe", strategy="state_dict", timeout=30.0),
        CRITIC: WeightSyncScheme.from_backend("shared-mem", strategy="tensordict", timeout=30.0),
    }
    pipes = {model_id: [procs.pipe() for _ in range(2)] for model_id in schemes}
    for model_id, scheme in schemes.items():
        scheme.init_on_sender(
            model_id, model=trainer[model_id], pipes=[t for t, _ in pipes[model_id]]
        )
    controls = []
    for w in range(2):
        ctl_here, ctl_there = procs.pipe()
        worker_models = {POLICY: make_model(1), CRITIC: _critic(1)}
        worker_pipes = {model_id: pipes[model_id][w][1] for model_id in schemes}
        procs.start(serve_models, schemes, worker_pipes, worker_models, ctl_there)
        controls.append(ctl_here)
    for ctl in controls:  # what arrived in the worker: no role, no transport, before init there
        for model_id in schemes:
            assert ctl.poll(REPLY_S)
            assert ctl.recv() == ("unpickled", model_id, None, True)
    for scheme in schemes.values():
        scheme.connect()

    def versions():
        return {model_id: scheme.get_sender().version for model_id, scheme in schemes.items()}

    initial_critic = state_of(_critic(0))
    connected = versions()
    perturb(trainer[POLICY], 1)
    schemes[POLICY].send()  # the policy alone
    assert versions() == {POLICY: connected[POLICY] + 1, CRITIC: connected[CRITIC]}
    for w, ctl in enumerate(controls):
        _, held, states = ask(ctl, "state", 30.0, versions())
        assert held == versions()
        assert_same_state(states[POLICY], state_of(trainer[POLICY]), f"worker {w} policy")
        assert_same_state(states[CRITIC], initial_critic, f"worker {w} critic")

    for step in (1, 2):  # then the critic alone
        with torch.no_grad():
            for p in trainer[CRITIC].parameters():
                p.add_(step)
        schemes[CRITIC].send()
    policy_now = state_of(trainer[POLICY])
    for w, ctl in enumerate(controls):
        _, held, states = ask(ctl, "state", 30.0, versions())
        assert held == versions()
        assert_same_state(states[CRITIC], state_of(trainer[CRITIC]), f"worker {w} critic")
        assert_same_state(states[POLICY], policy_now, f"worker {w} policy")
    for ctl in controls:
        ctl.send(("stop",))
    for scheme in schemes.values():
        scheme.shutdown()
