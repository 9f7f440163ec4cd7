"""Tests of the actor-critic model: shapes, sampling, log-probabilities and sizes."""

import math

import pytest
import torch

from experiments.models import ActorCritic, count_parameters


def test_forward_shapes_with_leading_dims() -> None:
    model = ActorCritic(4, 3, hidden_sizes=(32,))
    logits, value = model(torch.randn(5, 7, 4))
    assert logits.shape == (5, 7, 3) and value.shape == (5, 7)


def test_act_log_prob_agrees_with_evaluate() -> None:
    torch.manual_seed(0)
    model = ActorCritic(4, 3, hidden_sizes=(16, 16))
    obs = torch.randn(6, 10, 4)
    action, log_prob = model.act(obs)
    assert action.shape == (6, 10) and action.dtype == torch.int64
    assert action.min() >= 0 and action.max() < 3
    eval_log_prob, entropy, value = model.evaluate(obs, action)
    torch.testing.assert_close(log_prob, eval_log_prob)
    logits, expected_value = model(obs)
    dist = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(log_prob, dist.log_prob(action))
    torch.testing.assert_close(entropy, dist.entropy())
    torch.testing.assert_close(value, expected_value)


def test_act_with_generator_is_reproducible_and_follows_policy() -> None:
    model = ActorCritic(4, 2)
    with torch.no_grad():
        model.actor[-1].bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # p(action 1) ~= 0.75
    obs = torch.zeros(20000, 4)
    first, _ = model.act(obs, generator=torch.Generator().manual_seed(5))
    second, _ = model.act(obs, generator=torch.Generator().manual_seed(5))
    assert torch.equal(first, second)
    assert first.float().mean().item() == pytest.approx(0.75, abs=0.015)


def test_initial_policy_is_near_uniform() -> None:
    model = ActorCritic(4, 2)
    _, entropy, _ = model.evaluate(torch.randn(100, 4), torch.zeros(100, dtype=torch.int64))
    assert entropy.min().item() > math.log(2) - 1e-3


def test_count_parameters() -> None:
    # Actor: 4*64+64 + 64*64+64 + 64*2+2 = 4610; critic: same trunk + 64+1 = 4545.
    assert count_parameters(ActorCritic(4, 2)) == 4610 + 4545
    wide = ActorCritic(4, 2, hidden_sizes=(256,) * 3, activation="relu", orthogonal_init=False)
    assert count_parameters(wide) == 2 * (4 * 256 + 256 + 2 * (256 * 256 + 256)) + 256 * 3 + 3


def test_unknown_activation_is_rejected() -> None:
    with pytest.raises(ValueError, match="activation"):
        ActorCritic(4, 2, activation="swishy")
