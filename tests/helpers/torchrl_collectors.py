"""What the interop tests share: a tiny policy whose action *is* its weights, TorchRL's mock env,
and a collector that is always torn down.

The policy is a ``Linear`` with zero weights, so its action is its bias whatever it observes: with
the bias set to ``1 + version``, a batch tells which weights each worker acted with, and whether a
rollout mixed two of them.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.testing.mocking_classes import ContinuousActionVecMockEnv

NUM_WORKERS = 2
FRAMES_PER_WORKER = 10


def make_env() -> ContinuousActionVecMockEnv:
    """TorchRL's mock env (7-dim observation and action); module-level: spawn pickles it."""
    return ContinuousActionVecMockEnv()


def make_env_without_its_package() -> ContinuousActionVecMockEnv:
    """An env factory that fails in the worker, as one whose simulator is not installed there."""
    import an_env_package_that_is_not_installed  # noqa: F401

    return make_env()


def make_policy(bias: float = 1.0) -> tuple[TensorDictModule, nn.Linear]:
    env = make_env()
    linear = nn.Linear(env.observation_spec["observation"].shape[-1], env.action_spec.shape[-1])
    set_bias(linear, bias)
    return TensorDictModule(linear, in_keys=["observation"], out_keys=["action"]), linear


def set_bias(linear: nn.Linear, bias: float) -> None:
    """What an optimizer step does to the trainer's policy, in a form a batch can show."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.fill_(bias)


def weights_with_bias(linear: nn.Linear, bias: float) -> TensorDict:
    """Weights for ``update_policy_weights_(weights)``: the policy's, laid out like it."""
    weights = TensorDict.from_module(linear).data.clone()
    weights["bias"].fill_(bias)
    return TensorDict({"module": weights})


def rollout_weights(rollout: TensorDict) -> tuple[float, int]:
    """The bias a worker acted with and the policy version it recorded for one rollout; fails
    if the rollout mixes two of either."""
    actions = rollout["action"].unique()
    versions = rollout["next", "policy_version"].unique()  # the root one lags one step behind
    assert actions.numel() == 1, f"one rollout acted with several weights: {actions.tolist()}"
    assert versions.numel() == 1, f"one rollout spans several versions: {versions.tolist()}"
    return float(actions), int(versions)


@contextlib.contextmanager
def collector_of(collector_cls, scheme, policy, **kwargs):
    """A collector with ``scheme`` for its policy, shut down (and its workers killed if they do
    not stop) even when the test fails."""
    collector = collector_cls(
        [make_env] * NUM_WORKERS,
        policy,
        frames_per_batch=NUM_WORKERS * FRAMES_PER_WORKER,
        total_frames=-1,
        weight_sync_schemes={"policy": scheme},
        track_policy_version=True,
        **kwargs,
    )
    try:
        yield collector
    finally:
        stopper = threading.Thread(target=collector.shutdown, daemon=True)
        stopper.start()
        stopper.join(timeout=30)
        for proc in getattr(collector, "procs", []):
            if proc.is_alive():
                proc.kill()
            proc.join(timeout=10)
