"""Tests of the PPO learner: GAE bookkeeping, the update contract, and that it actually learns."""

from collections import deque
from itertools import pairwise

import pytest
import torch

from experiments.envs import BatchedCartPole
from experiments.learner import ImpalaLearner, PPOLearner, compute_gae, prepare_batch
from experiments.models import ActorCritic
from experiments.rollout import collect_rollout

NUM_ENVS = 16
ROLLOUT_STEPS = 128
TARGET_RETURN = 150.0
MAX_UPDATES = 50  # about 100k frames; the seeds below need 15-16 updates


def _gae(terminated: list[bool], truncated: list[bool]) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE with gamma = lambda = 0.5 on one 3-step column with rewards 1 and simple values."""
    column = torch.tensor
    return compute_gae(
        reward=column([[1.0], [1.0], [1.0]]),
        value=column([[1.0], [2.0], [4.0]]),
        next_value=column([[10.0], [20.0], [40.0]]),
        terminated=column([[False], [terminated[1]], [False]]),
        truncated=column([[False], [truncated[1]], [False]]),
        gamma=0.5,
        gae_lambda=0.5,
    )


def test_gae_without_episode_end() -> None:
    advantages, returns = _gae([False] * 3, [False] * 3)
    # deltas: 1 + 0.5*10 - 1 = 5, 1 + 0.5*20 - 2 = 9, 1 + 0.5*40 - 4 = 17.
    expected = torch.tensor([[5.0 + 0.25 * (9.0 + 0.25 * 17.0)], [9.0 + 0.25 * 17.0], [17.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + torch.tensor([[1.0], [2.0], [4.0]]))


def test_gae_terminated_step_does_not_bootstrap() -> None:
    advantages, _ = _gae([False, True, False], [False] * 3)
    # Step 1 ends the episode: delta = 1 - 2 = -1, and step 2 belongs to a new episode.
    torch.testing.assert_close(advantages, torch.tensor([[5.0 + 0.25 * -1.0], [-1.0], [17.0]]))


def test_gae_truncated_step_bootstraps_but_does_not_chain() -> None:
    advantages, _ = _gae([False] * 3, [False, True, False])
    torch.testing.assert_close(advantages, torch.tensor([[5.0 + 0.25 * 9.0], [9.0], [17.0]]))


def _rollout_batch(seed: int, num_envs: int = 8, steps: int = 32):
    torch.manual_seed(seed)
    model = ActorCritic(4, 2)
    env = BatchedCartPole(num_envs, seed=seed)
    return model, collect_rollout(env, model, steps)


def test_update_reports_metrics_and_calls_before_step_before_each_step() -> None:
    model, batch = _rollout_batch(0)
    learner = PPOLearner(model, epochs=3, minibatches=2, seed=0)
    snapshots: list[torch.Tensor] = []

    def before_step() -> None:
        snapshots.append(torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone())

    initial = torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    stats = learner.update(batch, before_step=before_step)

    assert set(stats) == {
        "loss",
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "clip_fraction",
        "importance_ratio_mean",
        "importance_ratio_std",
    }
    assert all(isinstance(v, float) and torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["value_loss"] > 0 and stats["entropy"] == pytest.approx(0.693, abs=0.01)
    assert 0.0 <= stats["clip_fraction"] <= 1.0
    assert len(snapshots) == 3 * 2
    # The callback sees the parameters as they were before the step that follows it.
    assert torch.equal(snapshots[0], initial)
    for earlier, later in pairwise(snapshots):
        assert not torch.equal(earlier, later)
    final = torch.nn.utils.parameters_to_vector(model.parameters())
    assert not torch.equal(final, snapshots[-1])


def _parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def test_on_policy_the_ratios_are_one_and_is_changes_nothing() -> None:
    """Acted by the model that learns, pi/mu is 1 everywhere, and PPO with truncated importance
    weights makes exactly the update plain PPO makes."""
    updated = []
    for correction in ("none", "is"):
        model, batch = _rollout_batch(3)
        stats = PPOLearner(model, correction=correction, seed=0).update(batch)
        assert stats["importance_ratio_mean"] == pytest.approx(1.0, abs=1e-6)
        assert stats["importance_ratio_std"] == pytest.approx(0.0, abs=1e-6)
        updated.append(_parameters(model))
    torch.testing.assert_close(updated[0], updated[1])


def test_off_policy_ratios_are_measured_and_every_correction_updates() -> None:
    model, batch = _rollout_batch(4)
    batch["log_prob"] = batch["log_prob"] - 0.3 * torch.rand_like(batch["log_prob"])  # mu: other
    cases = [(PPOLearner, "is"), (PPOLearner, "vtrace"), (ImpalaLearner, "vtrace"),
             (ImpalaLearner, "none")]  # fmt: skip
    for learner_cls, correction in cases:
        before = _parameters(model)
        stats = learner_cls(model, correction=correction, seed=0).update(batch)
        assert stats["importance_ratio_mean"] > 1.0 and stats["importance_ratio_std"] > 0.0
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
        assert not torch.equal(before, _parameters(model)), (learner_cls, correction)


@pytest.mark.parametrize(
    ("correction", "anchored_to"), [("none", "mu"), ("vtrace", "mu"), ("is", "pi")]
)
def test_ppos_clip_is_anchored_to_the_acting_policy_except_under_decoupled_is(
    correction: str, anchored_to: str
) -> None:
    """The PPO ratio is taken against mu (the policy that acted) for none and vtrace (APPO's
    form), and against the learner's own policy at the start of the update for is."""
    model, batch = _rollout_batch(6)
    batch["log_prob"] = batch["log_prob"] - 0.3 * torch.rand_like(batch["log_prob"])  # mu: other
    flat, _ = prepare_batch(model, batch, correction, 0.99, 0.95, 1.0, 1.0, True)
    with torch.no_grad():
        log_pi, _, _ = model.evaluate(batch["obs"], batch["action"])
    expected = {"mu": batch["log_prob"], "pi": log_pi}[anchored_to].reshape(-1)
    torch.testing.assert_close(flat["anchor_log_prob"], expected)


def test_impala_makes_one_gradient_step_per_batch() -> None:
    model, batch = _rollout_batch(5)
    steps = []
    ImpalaLearner(model, seed=0).update(batch, before_step=lambda: steps.append(1))
    assert steps == [1]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"correction": "foo"}, "none"), ({"rho_bar": 0.0}, "rho_bar"), ({"c_bar": -1.0}, "c_bar")],
)
def test_learners_refuse_bad_corrections(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PPOLearner(ActorCritic(4, 2), **arguments)


def test_update_accepts_worker_batches_concatenated_along_envs() -> None:
    model, first = _rollout_batch(1, num_envs=3, steps=20)
    second = collect_rollout(BatchedCartPole(5, seed=2), model, 20)
    side_by_side = {key: torch.cat([first[key], second[key]], dim=1) for key in first}
    stats = PPOLearner(model, seed=0).update(side_by_side)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())


def test_update_rejects_flat_batch() -> None:
    model, batch = _rollout_batch(0)
    with pytest.raises(ValueError, match="T, B"):
        PPOLearner(model).update({key: value.flatten(0, 1) for key, value in batch.items()})


def _mean_recent_return(env: BatchedCartPole, recent: deque[float]) -> float:
    recent.extend(env.pop_finished_returns().tolist())
    return sum(recent) / len(recent) if recent else 0.0


def train_until_target(seed: int) -> int | None:
    """Train PPO on CartPole; return the frames collected when the mean return of the last
    20 finished episodes first exceeds the target, or None if the budget runs out."""
    torch.manual_seed(seed)
    env = BatchedCartPole(NUM_ENVS, seed=seed)
    model = ActorCritic(env.observation_size, env.num_actions, hidden_sizes=(64, 64))
    learner = PPOLearner(model, lr=5e-4, epochs=4, minibatches=4, seed=seed)
    sampler = torch.Generator().manual_seed(seed)
    recent: deque[float] = deque(maxlen=20)
    for update in range(1, MAX_UPDATES + 1):
        batch = collect_rollout(env, model, ROLLOUT_STEPS, generator=sampler)
        if _mean_recent_return(env, recent) > TARGET_RETURN:
            return update * NUM_ENVS * ROLLOUT_STEPS
        learner.update(batch)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_learns_cartpole(seed: int) -> None:
    frames = train_until_target(seed)
    assert frames is not None, f"mean return stayed <= {TARGET_RETURN} for {MAX_UPDATES} updates"


def test_untrained_policy_stays_low() -> None:
    torch.manual_seed(0)
    env = BatchedCartPole(NUM_ENVS, seed=0)
    model = ActorCritic(env.observation_size, env.num_actions)
    sampler = torch.Generator().manual_seed(0)
    for _ in range(4):
        collect_rollout(env, model, ROLLOUT_STEPS, generator=sampler)
    returns = env.pop_finished_returns()
    assert returns.numel() > 50
    assert returns.mean().item() < 50.0
