"""Every scheme x strategy with real spawned workers: after each update every worker holds the
trainer's weights exactly (``none``: its initial ones), parameters, buffers and extra state."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.models import assert_same_state, make_model, perturb, state_of
from tests.helpers.workers import ask, serve
from weightsync import WeightSyncScheme

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

BACKENDS = ["none", "pipe", "shared-mem"]
STRATEGIES = ["state_dict", "tensordict"]
NUM_WORKERS = 2


def start_workers(procs, scheme, num_workers=NUM_WORKERS):
    trainer_ends, controls = [], []
    for _ in range(num_workers):
        trainer_end, worker_end = procs.pipe()
        ctl_here, ctl_there = procs.pipe()
        procs.start(serve, scheme, worker_end, ctl_there)
        trainer_ends.append(trainer_end)
        controls.append(ctl_here)
    return trainer_ends, controls


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_worker_holds_the_trainers_weights_after_each_update(procs, backend, strategy):
    trainer_model = make_model(seed=0)
    initial_worker_state = state_of(make_model(seed=1))
    # generous timeout: spawning workers (torch import) is slow on a loaded 2-core machine
    scheme = WeightSyncScheme.from_backend(backend, strategy=strategy, timeout=60)
    pipes, controls = start_workers(procs, scheme)
    scheme.init_on_sender("policy", model=trainer_model, pipes=pipes)
    scheme.connect()
    for step in range(1, 4):
        perturb(trainer_model, step)
        scheme.send()
        want = initial_worker_state if backend == "none" else state_of(trainer_model)
        version = 0 if backend == "none" else scheme.get_sender().version
        for w, ctl in enumerate(controls):
            _, held, state = ask(ctl, "sync", version, 10.0)
            assert held == version
            assert_same_state(state, want, f"{backend}/{strategy} worker {w} step {step}")
    x = torch.randn(5, 4)
    with torch.no_grad():
        expected = trainer_model(x) if backend != "none" else make_model(seed=1)(x)
    for ctl in controls:
        _, out = ask(ctl, "forward", x)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        ctl.send(("stop",))
    scheme.shutdown()
