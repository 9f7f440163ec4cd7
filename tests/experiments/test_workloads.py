"""The Gymnasium workloads: envs described before any worker starts, bad ids and mismatched
models refused with the fix, each env family's step semantics (true final observations, raw
returns under normalised or clipped rewards, episodic life), and PPO learning on a Gymnasium
env through the same rollout and learner as the torch CartPole."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from experiments.config import ConfigError, validate
from experiments.factory import env_factory, policy_factory
from experiments.learner import PPOLearner
from experiments.models import ActorCritic, NatureCNN
from experiments.rollout import collect_rollout
from tests.helpers.run_py import ROOT

pytest.importorskip("gymnasium", reason="the envs extra: pip install -e '.[envs]'")

from experiments.envs.atari import AtariEnv  # needs the envs extra
from experiments.envs.gym import GymEnv

GYM_OPTIONS = {"backend": "gymnasium", "max_steps": None, "normalize_observation": False,
               "normalize_reward": False, "gamma": 0.99, "clip": 10.0}  # fmt: skip
ATARI_OPTIONS = {"noop_max": 30, "frame_skip": 4, "screen_size": 84, "frame_stack": 4,
                 "episodic_life": True, "clip_rewards": True,
                 "repeat_action_probability": 0.0}  # fmt: skip


@pytest.fixture
def make_cfg() -> Callable[..., DictConfig]:
    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


# ------------------------------------------------------------------ refused before any process
def test_a_misspelt_id_is_refused_with_gymnasiums_suggestion_in_one_line(make_cfg) -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg("env=gym", "env.id=Acrobt-v1"))
    message = str(info.value)
    assert "Acrobt-v1" in message and "Did you mean: `Acrobot`?" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["env=atari", "model=mlp"], ["ActorCritic", "(4, 84, 84), uint8", "model=nature_cnn",
                                      "model=impala_cnn"]),
        (["model=impala_cnn"], ["ImpalaCNN", "reads pixels", "CartPole", "model=mlp"]),
        (["env=gym", "env.id=Blackjack-v1"], ["Tuple(Discrete(32)", "model=mlp"]),
        (["env=mujoco", "env.id=Pendulum-v1", "env.backend=envpool"],
         ["env.normalize_observation=true needs env.backend=gymnasium"]),
        (["env=atari", "env.backend=envpool"], ["env=atari with env.backend=envpool",
                                               "env.backend=gymnasium"]),
        (["env=gym", "env.backend=envpool", "env.id=CartPol-v1"], ["CartPol-v1",
                                                                  "Did you mean: CartPole-v1"]),
    ],
)  # fmt: skip
def test_a_model_or_env_that_cannot_work_is_refused_naming_space_and_fix(
    make_cfg, overrides, expected
) -> None:
    with pytest.raises(ConfigError) as info:
        validate(make_cfg(*overrides))
    for word in expected:
        assert word in str(info.value), f"{word!r} not in: {info.value}"


@pytest.mark.parametrize(
    ("overrides", "model_class", "obs_shape", "action_kind"),
    [
        (["env=gym", "env.id=Acrobot-v1"], ActorCritic, (6,), "discrete"),
        (["env=mujoco", "env.id=Pendulum-v1"], ActorCritic, (3,), "continuous"),
        (["env=atari"], NatureCNN, (4, 84, 84), "discrete"),  # env=atari picks the CNN
    ],
)
def test_the_policy_follows_the_envs_spaces(
    make_cfg, overrides, model_class, obs_shape, action_kind
) -> None:
    cfg = make_cfg(*overrides, "env.num_envs=2")
    validate(cfg)
    policy = policy_factory(cfg)()
    assert type(policy) is model_class and policy.action_space.kind == action_kind
    env = env_factory(cfg)(device="cpu", seed=0)
    try:
        assert env.obs.shape == (2, *obs_shape)
        with torch.no_grad():
            action, _ = policy.act(env.obs)
        next_obs, reward, terminated, _ = env.step(action)
        assert next_obs.shape == env.obs.shape and reward.shape == terminated.shape == (2,)
    finally:
        env.close()


# ----------------------------------------------------------------------------- step semantics
BACKENDS = ["gymnasium", "envpool"]  # EnvPool is in the dev extra: CI runs both


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_truncated_episode_yields_its_final_observation_and_resets(backend: str) -> None:
    truncating, endless = (
        GymEnv("Pendulum-v1", 3, seed=0, **{**GYM_OPTIONS, "max_steps": limit, "backend": backend})
        for limit in (5, 1000)
    )
    try:
        actions = torch.linspace(-1, 1, 3).reshape(3, 1)
        for _ in range(5):
            next_obs, _, terminated, truncated = truncating.step(actions)
            expected, *_ = endless.step(actions)
        assert truncated.all() and not terminated.any()
        # The final observation is the true next state (as without the limit), the one to act
        # on next a fresh start.
        torch.testing.assert_close(next_obs, expected)
        assert not torch.equal(truncating.obs, next_obs)
        assert truncating.pop_finished_returns().shape == (3,)
    finally:
        truncating.close()
        endless.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_step_is_a_real_transition_and_returns_are_the_episodes_rewards(backend: str) -> None:
    """Where an episode goes on, the next observation is the one acted on next; where it ended,
    the one acted on next is a fresh start (CartPole's are within 0.05), in the same step; each
    finished episode's return is the sum of its rewards (CartPole: its length)."""
    env = GymEnv("CartPole-v1", 4, seed=1, **{**GYM_OPTIONS, "backend": backend})
    try:
        acted, following, ended, rewards = [], [], [], []
        actions = torch.Generator().manual_seed(0)
        for _ in range(120):
            acted.append(env.obs.clone())
            next_obs, reward, terminated, truncated = env.step(
                torch.randint(0, 2, (4,), generator=actions)
            )
            following.append(next_obs)
            ended.append(terminated | truncated)
            rewards.append(reward)
        acted, following, ended = torch.stack(acted), torch.stack(following), torch.stack(ended)
        going_on = ~ended[:-1]
        assert ended.sum() >= 8, "too few episodes ended to check anything"
        assert torch.equal(following[:-1][going_on], acted[1:][going_on])
        assert acted[1:][ended[:-1]].abs().max() <= 0.05  # fresh starts
        assert not torch.equal(following[:-1][ended[:-1]], acted[1:][ended[:-1]])
        lengths = []
        for column in range(4):  # the steps from each start to each end, per copy
            ends = torch.nonzero(ended[:, column]).flatten().tolist()
            lengths += [end - start for start, end in zip([-1, *ends], ends, strict=False)]
        assert torch.equal(torch.stack(rewards), torch.ones(120, 4))
        assert sorted(env.pop_finished_returns().tolist()) == sorted(float(n) for n in lengths)
    finally:
        env.close()


def test_returns_are_reported_raw_under_reward_normalisation() -> None:
    actions = torch.linspace(-2, 2, 3).reshape(3, 1)
    raw, normalised = (
        GymEnv("Pendulum-v1", 3, seed=4, **{**GYM_OPTIONS, "max_steps": 20,
                                            "normalize_reward": flag})
        for flag in (False, True)
    )  # fmt: skip
    rewards = {False: [], True: []}
    for _ in range(20):
        for flag, env in ((False, raw), (True, normalised)):
            rewards[flag].append(env.step(actions)[1])
    assert not torch.allclose(torch.stack(rewards[True]), torch.stack(rewards[False]))
    raw_returns = torch.stack(rewards[False]).sum(0)  # every episode ends at step 20
    torch.testing.assert_close(raw.pop_finished_returns(), raw_returns)
    torch.testing.assert_close(normalised.pop_finished_returns(), raw_returns)


def test_atari_frames_are_uint8_stacks_and_a_lost_life_ends_only_the_learners_episode() -> None:
    env = AtariEnv("ALE/Breakout-v5", 1, seed=0, **GYM_OPTIONS, **ATARI_OPTIONS)
    try:
        assert env.obs.dtype == torch.uint8 and env.obs.shape == (1, 4, 84, 84)
        ends, games = 0, []
        sampler = torch.Generator().manual_seed(0)
        while not games:
            action = torch.randint(0, 4, (1,), generator=sampler)
            _, reward, terminated, truncated = env.step(action)
            assert reward.abs().max() <= 1.0  # clipped for learning
            ends += int(terminated.sum() + truncated.sum())
            games += env.pop_finished_returns().tolist()
        assert ends == 5  # Breakout's five lives, each an episode for the learner: one game
        assert games[0] >= 0
    finally:
        env.close()


# ----------------------------------------------------------------------------------- learning
@pytest.mark.slow
@pytest.mark.timeout(300)  # about 20 s on an idle 2-core machine
def test_ppo_learns_a_gymnasium_env() -> None:
    """CartPole-v1 from Gymnasium (not the torch one): the mean return of the last 20 episodes
    climbs from about 20 (a random policy) past 100 within 40 updates of 1024 frames."""
    torch.manual_seed(0)
    env = GymEnv("CartPole-v1", 8, seed=0, **GYM_OPTIONS)
    policy = ActorCritic(env.spaces.observation, env.spaces.action)
    learner = PPOLearner(policy, lr=5e-4, seed=0)
    sampler = torch.Generator().manual_seed(0)
    recent: deque[float] = deque(maxlen=20)
    history = []
    try:
        for _ in range(40):
            batch = collect_rollout(env, policy, 128, generator=sampler)
            recent.extend(env.pop_finished_returns().tolist())
            history.append(sum(recent) / max(len(recent), 1))
            if history[-1] > 100:
                break
            learner.update(batch)
    finally:
        env.close()
    assert history[0] < 40 and history[-1] > 100, history
