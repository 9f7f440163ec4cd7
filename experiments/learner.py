"""The learners: clipped PPO (with GAE) and IMPALA (V-trace actor-critic), for
:class:`ActorCritic`-like models (``evaluate``, ``value``), with the off-policy corrections of
``experiments/correction.py`` as an option of both.

Both share one update (:class:`PolicyGradientLearner`): the batch is prepared once with the
current model (:func:`prepare_batch`: values, corrected advantages and targets, the policy the
ratio is anchored to, per-step weights), then ``epochs`` passes of ``minibatches`` Adam steps
minimise the loss; they differ only in its policy term and in their defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from experiments.correction import CORRECTIONS, truncated_importance_weights, vtrace
from experiments.models import ActorCritic

#: Named tensors sharing their leading dimensions: a ``[T, B]`` batch or a flat ``[N]`` minibatch
#: (not to be confused with ``experiments.collection.Batch``, what one iteration collected).
Tensors = Mapping[str, Tensor]

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


def prepare_batch(
    model: ActorCritic,
    batch: Tensors,
    correction: str,
    gamma: float,
    gae_lambda: float,
    rho_bar: float,
    c_bar: float,
    normalize_advantage: bool,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """A ``[T, B]`` batch flattened for minibatches, with what both learners optimise.

    Keys: ``obs``, ``action``; ``anchor_log_prob`` (what the policy ratio is taken against: the
    learner's log-prob at the start of this update for ``correction=is``, else the behaviour
    policy's); ``advantage`` (GAE, or V-trace's for ``vtrace``; normalised over the batch if
    ``normalize_advantage``);
    ``return`` (the critic's target); ``weight`` (each step's weight in the policy loss: the
    truncated importance weight for ``is``, times the rollout's ``sample_weight`` where it has
    one, see ``run.on_stale``); ``sample_weight`` (in the value loss).

    Also returns the mean and standard deviation of the importance ratios ``pi/mu`` of the batch
    (``importance_ratio_mean``, ``importance_ratio_std``), whatever the correction.
    """
    with torch.no_grad():
        log_pi, _, value = model.evaluate(batch["obs"], batch["action"])
        next_value = model.value(batch["next_obs"])
        log_ratio = log_pi - batch["log_prob"]
        sample_weight = batch.get("sample_weight", torch.ones_like(value))
        weight = sample_weight
        if correction == "vtrace":
            returns, advantages = vtrace(
                batch["reward"], value, next_value, batch["terminated"], batch["truncated"],
                log_ratio, gamma, rho_bar, c_bar,
            )  # fmt: skip
        else:
            advantages, returns = compute_gae(
                batch["reward"], value, next_value, batch["terminated"], batch["truncated"],
                gamma, gae_lambda,
            )  # fmt: skip
            if correction == "is":
                weight = weight * truncated_importance_weights(log_ratio, rho_bar)
        anchor = log_pi if correction == "is" else batch["log_prob"]
        ratio = log_ratio.exp()
    if normalize_advantage:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    prepared = {
        "obs": batch["obs"],
        "action": batch["action"],
        "anchor_log_prob": anchor,
        "advantage": advantages,
        "return": returns,
        "weight": weight,
        "sample_weight": sample_weight,
    }
    flat = {key: value.flatten(0, 1) for key, value in prepared.items()}
    std = ratio.std().item() if ratio.numel() > 1 else 0.0
    return flat, {"importance_ratio_mean": ratio.mean().item(), "importance_ratio_std": std}


class PolicyGradientLearner:
    """The update both learners share; a subclass defines :meth:`_policy_loss`.

    Each :meth:`update` prepares the batch (:func:`prepare_batch`) with the current model, then
    runs ``epochs`` passes of ``minibatches`` Adam steps over random minibatches, minimising the
    policy loss, ``vf_coef`` times the critic's squared error to its targets and minus
    ``ent_coef`` times the entropy. ``seed`` seeds the private generator that shuffles
    minibatches (nondeterministic if None). ``correction`` (``none``, ``is``, ``vtrace``),
    ``rho_bar`` and ``c_bar``: see ``experiments/correction.py``.
    """

    normalize_advantage = True

    def __init__(
        self,
        model: ActorCritic,
        lr: float = 5e-4,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        epochs: int = 4,
        minibatches: int = 4,
        max_grad_norm: float = 0.5,
        correction: str = "none",
        rho_bar: float = 1.0,
        c_bar: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if epochs < 1 or minibatches < 1:
            raise ValueError(
                f"epochs and minibatches must be positive, got {epochs} and {minibatches}"
            )
        if not (rho_bar > 0 and c_bar > 0):
            raise ValueError(f"rho_bar and c_bar must be > 0, got {rho_bar} and {c_bar}")
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown correction {correction!r}; choose from {CORRECTIONS}")
        self.model = model
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.ent_coef = ent_coef
        self.vf_coef = vf_coef
        self.epochs = epochs
        self.minibatches = minibatches
        self.max_grad_norm = max_grad_norm
        self.correction = correction
        self.rho_bar = rho_bar
        self.c_bar = c_bar
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
        self,
        batch: Tensors,
        before_step: Callable[[], None] | None = None,
    ) -> dict[str, float]:
        """Run one update on a ``[T, B]`` batch and return mean training statistics.

        Args:
            batch: time-major ``[T, B]`` tensors as ``collect_rollout`` returns them (columns from
                several workers may be concatenated along ``B``); moved to the model's device.
            before_step: called immediately before every ``optimizer.step()``, i.e. right
                before the parameters change (e.g. to wait for an in-flight weight copy).

        Returns:
            Means over all minibatch steps of ``loss``, ``policy_loss``, ``value_loss``,
            ``entropy``, ``approx_kl`` and ``clip_fraction``, and the batch's
            ``importance_ratio_mean`` and ``importance_ratio_std``.
        """
        steps = batch["reward"]
        if steps.dim() != 2:
            raise ValueError(f"batch must be [T, B], got reward of shape {tuple(steps.shape)}")
        if steps.numel() < self.minibatches:
            raise ValueError(
                f"batch of {steps.numel()} samples is smaller than {self.minibatches} minibatches"
            )
        on_device = {key: value.to(self.device) for key, value in batch.items()}
        flat, ratios = prepare_batch(
            self.model, on_device, self.correction, self.gamma, self.gae_lambda,
            self.rho_bar, self.c_bar, self.normalize_advantage,
        )  # fmt: skip
        totals = torch.zeros(len(METRICS), device=self.device)
        for _ in range(self.epochs):
            order = torch.randperm(steps.numel(), generator=self._generator).to(self.device)
            for indices in order.tensor_split(self.minibatches):
                stats = self._minibatch_loss({key: value[indices] for key, value in flat.items()})
                self.optimizer.zero_grad(set_to_none=True)
                stats[0].backward()
                nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
                if before_step is not None:
                    before_step()
                self.optimizer.step()
                totals += torch.stack([s.detach() for s in stats])
        means = (totals / (self.epochs * self.minibatches)).tolist()
        return dict(zip(METRICS, means, strict=True)) | ratios

    def _minibatch_loss(self, mb: Tensors) -> tuple[Tensor, ...]:
        """Loss and diagnostics for one minibatch, in the order of ``METRICS``."""
        log_prob, entropy, value = self.model.evaluate(mb["obs"], mb["action"])
        log_ratio = log_prob - mb["anchor_log_prob"]
        policy_loss, clip_fraction = self._policy_loss(log_prob, log_ratio, mb)
        value_loss = 0.5 * (mb["sample_weight"] * (value - mb["return"]).square()).mean()
        entropy = entropy.mean()
        loss = policy_loss - self.ent_coef * entropy + self.vf_coef * value_loss
        with torch.no_grad():
            approx_kl = ((log_ratio.exp() - 1.0) - log_ratio).mean()
        return loss, policy_loss, value_loss, entropy, approx_kl, clip_fraction

    def _policy_loss(
        self, log_prob: Tensor, log_ratio: Tensor, mb: Tensors
    ) -> tuple[Tensor, Tensor]:
        """The policy term of the loss and the fraction of steps it clipped."""
        raise NotImplementedError


class PPOLearner(PolicyGradientLearner):
    """Clipped PPO: the policy ratio against ``anchor_log_prob`` is clipped to
    ``1 +- clip_coef``; with ``correction=is`` each step's clipped term is weighted by its
    truncated importance weight (decoupled PPO). Other arguments: the base class's."""

    def __init__(self, model: ActorCritic, clip_coef: float = 0.2, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.clip_coef = clip_coef

    def _policy_loss(
        self, log_prob: Tensor, log_ratio: Tensor, mb: Tensors
    ) -> tuple[Tensor, Tensor]:
        ratio = log_ratio.exp()
        advantage = mb["advantage"]
        clipped = torch.max(
            -advantage * ratio,
            -advantage * ratio.clamp(1.0 - self.clip_coef, 1.0 + self.clip_coef),
        )
        with torch.no_grad():
            clip_fraction = ((ratio - 1.0).abs() > self.clip_coef).float().mean()
        return (mb["weight"] * clipped).mean(), clip_fraction


class ImpalaLearner(PolicyGradientLearner):
    """IMPALA's actor-critic (Espeholt et al. 2018): policy loss
    ``-weight * advantage * log pi(a|x)``, by default with V-trace targets and advantages
    (``correction=vtrace``), unnormalised, one gradient step per batch and an entropy bonus.
    Nothing is clipped (``clip_fraction`` 0). Other arguments: the base class's."""

    normalize_advantage = False

    def __init__(
        self,
        model: ActorCritic,
        ent_coef: float = 0.01,
        epochs: int = 1,
        minibatches: int = 1,
        max_grad_norm: float = 40.0,
        correction: str = "vtrace",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, ent_coef=ent_coef, epochs=epochs, minibatches=minibatches,
                         max_grad_norm=max_grad_norm, correction=correction, **kwargs)  # fmt: skip

    def _policy_loss(
        self, log_prob: Tensor, log_ratio: Tensor, mb: Tensors
    ) -> tuple[Tensor, Tensor]:
        policy_loss = -(mb["weight"] * mb["advantage"] * log_prob).mean()
        return policy_loss, torch.zeros((), device=log_prob.device)
