"""Tests of the policies: shapes, sampling, log-probabilities and sizes, for each action space
(categorical, Gaussian) and each observation kind (vectors, uint8 frames)."""

import math

import pytest
import torch

from experiments.models import ActorCritic, ImpalaCNN, NatureCNN, count_parameters
from experiments.spaces import ActionSpace, ObservationSpace


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


# ------------------------------------------------------- the policy follows the env's spaces
CHEETAH = (ObservationSpace("vector", (17,)), ActionSpace("continuous", 6))
ATARI = (ObservationSpace("pixels", (4, 84, 84)), ActionSpace("discrete", 6))


def test_a_box_action_space_gets_a_gaussian_with_a_state_independent_log_std() -> None:
    torch.manual_seed(0)
    model = ActorCritic(*CHEETAH, log_std_init=-0.5)
    assert model.log_std.shape == (6,) and torch.all(model.log_std == -0.5)
    obs = torch.randn(5, 3, 17)
    action, log_prob = model.act(obs)
    assert action.shape == (5, 3, 6) and action.dtype == torch.float32
    eval_log_prob, entropy, _ = model.evaluate(obs, action)
    dist = torch.distributions.Normal(model.actor(obs), model.log_std.exp())
    torch.testing.assert_close(log_prob, dist.log_prob(action).sum(-1))
    torch.testing.assert_close(eval_log_prob, log_prob)
    torch.testing.assert_close(entropy, dist.entropy().sum(-1))
    assert "log_std" in dict(model.named_parameters())  # learned, and synced with the weights


def test_gaussian_sampling_is_reproducible_with_a_generator() -> None:
    model = ActorCritic(*CHEETAH)
    obs = torch.zeros(4000, 17)
    first, _ = model.act(obs, generator=torch.Generator().manual_seed(1))
    second, _ = model.act(obs, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    assert first.std().item() == pytest.approx(1.0, abs=0.05)  # exp(log_std_init=0)


@pytest.mark.parametrize(("model_class", "millions"), [(NatureCNN, 1.69), (ImpalaCNN, 1.09)])
def test_cnns_read_uint8_frames_and_have_their_published_sizes(model_class, millions) -> None:
    torch.manual_seed(0)
    model = model_class(*ATARI)
    assert count_parameters(model) / 1e6 == pytest.approx(millions, rel=0.01)
    frames = torch.randint(0, 256, (3, 2, 4, 84, 84), dtype=torch.uint8)
    action, log_prob = model.act(frames)
    assert action.shape == (3, 2) and action.dtype == torch.int64
    eval_log_prob, entropy, value = model.evaluate(frames, action)
    torch.testing.assert_close(eval_log_prob, log_prob)
    assert value.shape == (3, 2) and entropy.min().item() > math.log(6) - 1e-2  # near uniform
    # Frames are scaled inside the model: the same frames as floats in [0, 1] read alike.
    torch.testing.assert_close(
        model.value(frames), model.critic(model.trunk(frames.flatten(0, 1) / 255.0)).reshape(3, 2)
    )
