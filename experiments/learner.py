"""Proximal Policy Optimisation (clipped objective) with GAE, for :class:`ActorCritic` models."""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from torch import Tensor, nn

from experiments.models import ActorCritic

METRICS = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")


def compute_gae(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a ``[T, B]`` batch.

    ``next_value`` is the critic's value of the true next state of each step, so bootstrapping
    is correct across automatic resets: a terminated step does not bootstrap, a truncated step
    bootstraps from its next state, and neither lets the advantage of the following (new)
    episode leak backwards. The last step of the batch is treated like a truncation.

    Returns:
        ``(advantages, returns)``, both ``[T, B]``, where ``returns = advantages + value``.
    """
    not_terminated = (~terminated).to(value.dtype)
    not_done = (~(terminated | truncated)).to(value.dtype)
    deltas = reward + gamma * next_value * not_terminated - value
    advantages = torch.empty_like(value)
    running = torch.zeros_like(value[0])
    for t in range(reward.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * gae_lambda * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + value


class PPOLearner:
    """Trains an :class:`ActorCritic` with clipped PPO on batches from ``collect_rollout``.

    Each :meth:`update` computes GAE advantages with the current critic, normalises them over
    the batch, then runs ``epochs`` passes of ``minibatches`` Adam steps over random minibatches.
    ``seed`` seeds the private generator that shuffles minibatches (nondeterministic if None).
    """

    def __init__(
        self,
        model: ActorCritic,
        lr: float = 5e-4,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_coef: float = 0.2,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        epochs: int = 4,
        minibatches: int = 4,
        max_grad_norm: float = 0.5,
        seed: int | None = None,
    ) -> None:
        if epochs < 1 or minibatches < 1:
            raise ValueError(
                f"epochs and minibatches must be positive, got {epochs} and {minibatches}"
            )
        self.model = model
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.clip_coef = clip_coef
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.epochs = epochs
        self.minibatches = minibatches
        self.max_grad_norm = max_grad_norm
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-5)
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters, where updates run."""
        return next(self.model.parameters()).device

    def update(
        self, batch: TensorDict, before_step: Callable[[], None] | None = None
    ) -> dict[str, float]:
        """Run one PPO update on a ``[T, B]`` batch and return mean training statistics.

        Args:
            batch: time-major batch as returned by ``collect_rollout`` (columns from several
                workers may be concatenated along ``B``); it is moved to the model's device.
            before_step: called immediately before every ``optimizer.step()``, i.e. right
                before the parameters change (e.g. to wait for an in-flight weight copy).

        Returns:
            Means over all minibatch steps of ``loss``, ``policy_loss``, ``value_loss``,
            ``entropy``, ``approx_kl`` and ``clip_fraction``.
        """
        if batch.batch_dims != 2:
            raise ValueError(f"batch must be [T, B], got batch_size {tuple(batch.batch_size)}")
        if batch.numel() < self.minibatches:
            raise ValueError(
                f"batch of {batch.numel()} samples is smaller than {self.minibatches} minibatches"
            )
        batch = batch.to(self.device)
        with torch.no_grad():
            advantages, returns = compute_gae(
                batch["reward"],
                self.model.value(batch["obs"]),
                self.model.value(batch["next_obs"]),
                batch["terminated"],
                batch["truncated"],
                self.gamma,
                self.gae_lambda,
            )
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        flat = batch.select("obs", "action", "log_prob").reshape(-1)
        flat["advantage"] = advantages.reshape(-1)
        flat["return"] = returns.reshape(-1)

        totals = torch.zeros(len(METRICS), device=self.device)
        for _ in range(self.epochs):
            order = torch.randperm(flat.numel(), generator=self._generator).to(self.device)
            for indices in order.tensor_split(self.minibatches):
                stats = self._minibatch_loss(flat[indices])
                self.optimizer.zero_grad(set_to_none=True)
                stats[0].backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                if before_step is not None:
                    before_step()
                self.optimizer.step()
                totals += torch.stack([s.detach() for s in stats])
        means = (totals / (self.epochs * self.minibatches)).tolist()
        return dict(zip(METRICS, means, strict=True))

    def _minibatch_loss(self, mb: TensorDict) -> tuple[Tensor, ...]:
        """Loss and diagnostics for one minibatch, in the order of ``METRICS``."""
        log_prob, entropy, value = self.model.evaluate(mb["obs"], mb["action"])
        log_ratio = log_prob - mb["log_prob"]
        ratio = log_ratio.exp()
        advantage = mb["advantage"]
        policy_loss = torch.max(
            -advantage * ratio,
            -advantage * ratio.clamp(1.0 - self.clip_coef, 1.0 + self.clip_coef),
        ).mean()
        value_loss = 0.5 * (value - mb["return"]).square().mean()
        entropy = entropy.mean()
        loss = policy_loss - self.ent_coef * entropy + self.vf_coef * value_loss
        with torch.no_grad():
            approx_kl = ((ratio - 1.0) - log_ratio).mean()
            clip_fraction = ((ratio - 1.0).abs() > self.clip_coef).float().mean()
        return loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction
