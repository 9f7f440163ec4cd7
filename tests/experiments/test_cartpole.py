"""Tests of the batched CartPole: dynamics, termination, truncation, auto-reset, returns."""

import pytest
import torch

from experiments.envs import BatchedCartPole


def _step_all(env: BatchedCartPole, action: int):
    return env.step(torch.full((env.num_envs,), action, dtype=torch.int64))


def test_step_matches_hand_computed_dynamics() -> None:
    env = BatchedCartPole(2, seed=0)
    env.set_state(torch.tensor([[0.1, -0.2, 0.05, 0.3]] * 2))
    next_obs, reward, terminated, truncated = env.step(torch.tensor([1, 0]))
    # Reference for state (x, x_dot, theta, theta_dot) = (0.1, -0.2, 0.05, 0.3), worked out in
    # float64 from the Barto equations: push right gives temp = 9.091114,
    # theta_acc = -13.825207, x_acc = 9.718747; push left gives temp = -9.090705,
    # theta_acc = 15.401166, x_acc = -9.789883; then one Euler step of tau = 0.02.
    expected = torch.tensor(
        [
            [0.096, -0.005625066, 0.056, 0.023495852],
            [0.096, -0.395797655, 0.056, 0.608023314],
        ]
    )
    torch.testing.assert_close(next_obs, expected, atol=1e-6, rtol=0)
    assert next_obs.dtype == torch.float32
    torch.testing.assert_close(reward, torch.ones(2))
    assert not terminated.any() and not truncated.any()
    torch.testing.assert_close(env.obs, expected, atol=1e-6, rtol=0)


def test_reset_is_uniform_in_small_box_and_seeded() -> None:
    obs = BatchedCartPole(4096, seed=3).reset()
    assert obs.shape == (4096, 4) and obs.dtype == torch.float32
    assert obs.abs().max() <= 0.05
    assert obs.abs().max() > 0.049 and obs.mean().abs() < 0.005
    torch.testing.assert_close(BatchedCartPole(4096, seed=3).reset(), obs, rtol=0, atol=0)
    assert not torch.equal(BatchedCartPole(4096, seed=4).reset(), obs)


def test_seeded_envs_replay_identically() -> None:
    envs = [BatchedCartPole(8, seed=11) for _ in range(2)]
    actions = torch.Generator().manual_seed(0)
    for _ in range(100):
        action = torch.randint(0, 2, (8,), generator=actions)
        first, second = (env.step(action) for env in envs)
        for a, b in zip(first, second, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("state", "expect_terminated"),
    [
        ([2.399, 0.0, 0.0, 0.0], False),
        ([2.401, 0.0, 0.0, 0.0], True),
        ([-2.399, 0.0, 0.0, 0.0], False),
        ([-2.401, 0.0, 0.0, 0.0], True),
        ([0.0, 0.0, 0.209, 0.0], False),
        ([0.0, 0.0, 0.210, 0.0], True),
        ([0.0, 0.0, -0.209, 0.0], False),
        ([0.0, 0.0, -0.210, 0.0], True),
    ],
)
def test_termination_thresholds(state: list[float], expect_terminated: bool) -> None:
    # With zero velocities an Euler step leaves x and theta unchanged, so the state is tested
    # right at the threshold (|x| > 2.4, |theta| > 12 degrees = 0.2094 rad).
    env = BatchedCartPole(1, seed=0)
    env.set_state(torch.tensor([state]))
    next_obs, _, terminated, truncated = _step_all(env, 1)
    assert terminated.item() is expect_terminated
    assert not truncated.item()
    torch.testing.assert_close(next_obs[0, [0, 2]], torch.tensor(state)[[0, 2]])
    if expect_terminated:
        assert env.obs.abs().max() <= 0.05, "a terminated env must be auto-reset"
        torch.testing.assert_close(env.pop_finished_returns(), torch.tensor([1.0]))
    else:
        assert torch.equal(env.obs, next_obs)
        assert env.pop_finished_returns().numel() == 0


def test_auto_reset_only_touches_done_envs() -> None:
    env = BatchedCartPole(3, seed=0)
    env.set_state(torch.tensor([[0.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.0]]))
    next_obs, _, terminated, _ = _step_all(env, 0)
    assert terminated.tolist() == [False, True, True]
    assert torch.equal(env.obs[0], next_obs[0])
    assert next_obs[1, 0] == 3.0 and next_obs[2, 2] == pytest.approx(0.3)
    assert env.obs[1:].abs().max() <= 0.05


def test_truncation_at_max_steps_and_counter_restart() -> None:
    env = BatchedCartPole(4, seed=1, max_steps=5)
    for episode in range(2):
        for t in range(1, 6):
            _, _, terminated, truncated = _step_all(env, t % 2)
            assert not terminated.any()
            assert truncated.all() if t == 5 else not truncated.any(), (episode, t)
        torch.testing.assert_close(env.pop_finished_returns(), torch.full((4,), 5.0))


def test_finished_returns_match_episode_lengths() -> None:
    env = BatchedCartPole(6, seed=2, max_steps=40)
    actions = torch.Generator().manual_seed(0)
    lengths = torch.zeros(6)
    expected: list[float] = []
    for step in range(300):
        # A biased random policy gives a mix of terminations and truncations.
        action = (torch.rand(6, generator=actions) < (0.9 if step < 150 else 0.5)).long()
        _, reward, terminated, truncated = env.step(action)
        lengths += reward
        done = terminated | truncated
        expected += lengths[done].tolist()
        lengths[done] = 0.0
    returns = env.pop_finished_returns()
    assert returns.dtype == torch.float32 and returns.dim() == 1
    assert returns.tolist() == expected
    assert 1 < min(expected) < max(expected) == 40.0
    assert env.pop_finished_returns().numel() == 0


def test_reset_discards_running_episodes() -> None:
    env = BatchedCartPole(2, seed=0)
    for _ in range(3):
        _step_all(env, 1)
    env.reset()
    assert env.pop_finished_returns().numel() == 0
    env.set_state(torch.tensor([[3.0, 0.0, 0.0, 0.0]] * 2))
    _step_all(env, 1)
    torch.testing.assert_close(env.pop_finished_returns(), torch.tensor([1.0, 1.0]))


def test_obs_tensor_is_not_mutated_by_step() -> None:
    env = BatchedCartPole(5, seed=0)
    obs = env.obs
    saved = obs.clone()
    _step_all(env, 1)
    assert torch.equal(obs, saved)
    assert not torch.equal(env.obs, saved)


def test_rejects_bad_action_shape() -> None:
    env = BatchedCartPole(3)
    with pytest.raises(ValueError, match="action"):
        env.step(torch.zeros(2, dtype=torch.int64))
