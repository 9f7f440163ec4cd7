"""Atari games (ale-py) with the standard preprocessing, as a :class:`GymEnv`.

The preprocessing the field uses for ALE games (Mnih et al. 2015, Machado et al. 2018, as
CleanRL's and SB3's Atari agents apply it): no-op starts, frame skip 4 with the last two frames
max-pooled, 84x84 grey frames, a stack of 4, and for training episodic life and reward clipping.
The returns reported are raw game scores: the episode statistics sit below every wrapper that
changes rewards or episodes. Every wrapper is Gymnasium's own except :class:`EpisodicLife`,
which Gymnasium does not ship. ale-py (which ships the ROMs) is part of the ``envs`` extra.
"""

from __future__ import annotations

from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import torch
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation, TransformReward

from experiments.envs.gym import GymEnv

gym.register_envs(ale_py)  # the ALE/ namespace


class AtariEnv(GymEnv):
    """An ALE game (``ALE/Pong-v5``) with the standard Atari preprocessing.

    The base game runs with ``frameskip=1`` (frames are skipped, and the last two max-pooled,
    by ``AtariPreprocessing``) and ``repeat_action_probability`` (ALE v5's sticky actions:
    0.25 by default; 0.0 here, as CleanRL's Atari PPO plays the NoFrameskip-v4 games).

    Args beyond :class:`GymEnv`'s:
        noop_max: up to this many no-op actions after a reset, for varied starts.
        frame_skip: frames each action is repeated for.
        screen_size: side of the square grey frames.
        frame_stack: frames stacked into one observation (its channel dimension).
        episodic_life: a lost life ends the learner's episode (the game goes on).
        clip_rewards: rewards become their sign (-1, 0, 1) for learning.
        repeat_action_probability: ALE's sticky-action probability.
    """

    def __init__(
        self,
        id: str,
        num_envs: int,
        device: str | torch.device = "cpu",
        seed: int | None = None,
        *,
        noop_max: int,
        frame_skip: int,
        screen_size: int,
        frame_stack: int,
        episodic_life: bool,
        clip_rewards: bool,
        repeat_action_probability: float,
        **options: Any,
    ) -> None:
        self._atari = {
            "noop_max": noop_max,
            "frame_skip": frame_skip,
            "screen_size": screen_size,
            "frame_stack": frame_stack,
            "episodic_life": episodic_life,
            "clip_rewards": clip_rewards,
            "repeat_action_probability": repeat_action_probability,
        }
        super().__init__(id, num_envs, device, seed, **options)

    def _make_one(self) -> gym.Env:
        return self._make(self.id, **self._options, **self._atari)

    @classmethod
    def _envpool(cls, id: str, num_envs: int, seed: int | None, options: dict[str, Any]) -> Any:
        """Refused: EnvPool's Atari games have a preprocessing of their own (its options, its
        life-loss and raw-score signals), which this family does not map yet."""
        raise ValueError(
            "env=atari with env.backend=envpool is not wired: EnvPool's Atari preprocessing "
            "differs from the Gymnasium wrappers this family reports returns through. Use "
            "env.backend=gymnasium (EnvPool runs env=gym ids such as CartPole-v1)."
        )

    @classmethod
    def _make(
        cls,
        id: str,
        *,
        repeat_action_probability: float,
        make_kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> gym.Env:
        base = {"frameskip": 1, "repeat_action_probability": repeat_action_probability}
        return super()._make(id, make_kwargs={**base, **(make_kwargs or {})}, **options)

    @classmethod
    def _wrap(
        cls,
        env: gym.Env,
        *,
        noop_max: int,
        frame_skip: int,
        screen_size: int,
        frame_stack: int,
        episodic_life: bool,
        clip_rewards: bool,
    ) -> gym.Env:
        env = AtariPreprocessing(
            env, noop_max=noop_max, frame_skip=frame_skip, screen_size=screen_size
        )
        if episodic_life:
            env = EpisodicLife(env)
        if clip_rewards:
            env = TransformReward(env, np.sign)
        return FrameStackObservation(env, frame_stack)


class EpisodicLife(gym.Wrapper):
    """A lost life ends the episode for the learner; the game itself goes on.

    On a lost life ``step`` reports ``terminated``; the ``reset`` that follows takes a no-op
    step instead of restarting the game, unless the game really is over (Mnih et al. 2015; as
    SB3's ``EpisodicLifeEnv``). Wrappers below this one, such as the episode statistics, see
    whole games.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives = 0
        self._game_over = True

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._game_over = terminated or truncated
        lives = self.env.unwrapped.ale.lives()
        if 0 < lives < self._lives:
            terminated = True
        self._lives = lives
        return obs, reward, terminated, truncated, info

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        if self._game_over:
            obs, info = self.env.reset(**kwargs)
        else:
            obs, _, terminated, truncated, info = self.env.step(0)  # action 0 is NOOP
            if terminated or truncated:
                obs, info = self.env.reset(**kwargs)
        self._game_over = False
        self._lives = self.env.unwrapped.ale.lives()
        return obs, info
