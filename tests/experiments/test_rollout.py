"""Tests of rollout collection: layout, dtypes and consistency with the environment."""

import torch

from experiments.envs import BatchedCartPole
from experiments.models import ActorCritic
from experiments.rollout import collect_rollout


def test_rollout_layout_and_dtypes() -> None:
    env = BatchedCartPole(5, seed=0)
    batch = collect_rollout(env, ActorCritic(4, 2), num_steps=7)
    expected = {
        "obs": ((7, 5, 4), torch.float32),
        "action": ((7, 5), torch.int64),
        "log_prob": ((7, 5), torch.float32),
        "reward": ((7, 5), torch.float32),
        "terminated": ((7, 5), torch.bool),
        "truncated": ((7, 5), torch.bool),
        "next_obs": ((7, 5, 4), torch.float32),
    }
    assert set(batch.keys()) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
        assert batch[key].device == env.device, key
        assert not batch[key].requires_grad, key


def test_rollout_is_consistent_with_env_and_policy() -> None:
    torch.manual_seed(0)
    env = BatchedCartPole(8, seed=1, max_steps=30)
    policy = ActorCritic(4, 2)
    start = env.obs
    batch = collect_rollout(env, policy, num_steps=64)
    assert torch.equal(batch["obs"][0], start)
    done = batch["terminated"] | batch["truncated"]
    assert done.any() and batch["truncated"].any()
    # Where an episode continues, the next observation is the one acted on at the next step.
    continuing = ~done[:-1]
    assert torch.equal(batch["next_obs"][:-1][continuing], batch["obs"][1:][continuing])
    assert batch["obs"][1:][done[:-1]].abs().max() <= 0.05
    assert torch.equal(batch["next_obs"][-1][~done[-1]], env.obs[~done[-1]])
    assert torch.equal(batch["reward"], torch.ones(64, 8))
    with torch.no_grad():
        log_prob, _, _ = policy.evaluate(batch["obs"], batch["action"])
    torch.testing.assert_close(batch["log_prob"], log_prob)


def test_rollout_is_reproducible_with_seeds() -> None:
    policy = ActorCritic(4, 2)
    batches = [
        collect_rollout(
            BatchedCartPole(4, seed=3), policy, 50, generator=torch.Generator().manual_seed(9)
        )
        for _ in range(2)
    ]
    assert batches[0].keys() == batches[1].keys()
    for key in batches[0]:
        assert torch.equal(batches[0][key], batches[1][key]), key
