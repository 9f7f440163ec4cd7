"""V-trace and truncated importance weights against values worked out by hand.

The trajectory: 4 steps, gamma 0.9, two environments (columns). Column 0 terminates at step 1,
column 1 is truncated there (and bootstraps from its next state's value 3.0). The ratios
pi/mu are (2.0, 0.5, 1.5, 0.8), so with rho_bar 1.2 and c_bar 1.0 the truncation binds at
steps 0 and 2 (rho = 1.2, c = 1.0) and not at steps 1 and 3.

Worked out by hand (rho = 1.2, 0.5, 1.2, 0.8; c = 1.0, 0.5, 1.0, 0.8):

    delta_t = rho_t (r_t + gamma V(x'_t) [0 after a termination] - V(x_t))
      column 0: 1.2 (1 + 0.9 * 1.0 - 0.5) = 1.68 | 0.5 (2 - 1.0) = 0.5
                1.2 (0.5 + 0.9 * 1.5 - 2.0) = -0.18 | 0.8 (1 + 0.9 * 0.8 - 1.5) = 0.176
      column 1: step 1 is 0.5 (2 + 0.9 * 3.0 - 1.0) = 1.85, the others as column 0
    v_s_t - V(x_t) = delta_t + gamma c_t (v_s_{t+1} - V(x_{t+1})), cut at episode and batch ends
      column 0: step 3 0.176; step 2 -0.18 + 0.9 * 0.176 = -0.0216; step 1 0.5;
                step 0 1.68 + 0.9 * 0.5 = 2.13          -> v_s = 2.63, 1.5, 1.9784, 1.676
      column 1: step 1 1.85; step 0 1.68 + 0.9 * 1.85 = 3.345 -> v_s = 3.845, 2.85, 1.9784, 1.676
    advantage_t = rho_t (r_t + gamma v_s_{t+1} [V(x'_t) at an end, 0 after a termination] - V(x_t))
      column 0: 1.2 (1 + 0.9 * 1.5 - 0.5) = 2.22 | 0.5 (2 - 1) = 0.5
                1.2 (0.5 + 0.9 * 1.676 - 2) = 0.01008 | 0.8 (1 + 0.9 * 0.8 - 1.5) = 0.176
      column 1: 1.2 (1 + 0.9 * 2.85 - 0.5) = 3.678 | 0.5 (2 + 0.9 * 3.0 - 1) = 1.85 | as column 0
"""

from __future__ import annotations

import math

import pytest
import torch

from experiments.correction import truncated_importance_weights, vtrace

GAMMA = 0.9
RATIOS = [2.0, 0.5, 1.5, 0.8]


def _columns(*columns: list[float]) -> torch.Tensor:
    return torch.tensor(columns, dtype=torch.float64).T  # [T, B]


def _trajectory() -> dict[str, torch.Tensor]:
    return {
        "reward": _columns([1.0, 2.0, 0.5, 1.0], [1.0, 2.0, 0.5, 1.0]),
        "value": _columns([0.5, 1.0, 2.0, 1.5], [0.5, 1.0, 2.0, 1.5]),
        # V(x'_t): the next step's V(x) where the episode goes on; 3.0 after the episode end
        "next_value": _columns([1.0, 3.0, 1.5, 0.8], [1.0, 3.0, 1.5, 0.8]),
        "terminated": _columns([0, 1, 0, 0], [0, 0, 0, 0]).bool(),
        "truncated": _columns([0, 0, 0, 0], [0, 1, 0, 0]).bool(),
    }


def test_vtrace_matches_the_hand_worked_values_with_episode_ends_and_binding_clips() -> None:
    log_ratio = _columns(RATIOS, RATIOS).log()
    vs, advantages = vtrace(
        **_trajectory(), log_ratio=log_ratio, gamma=GAMMA, rho_bar=1.2, c_bar=1.0
    )
    expected_vs = _columns([2.63, 1.5, 1.9784, 1.676], [3.845, 2.85, 1.9784, 1.676])
    expected_advantages = _columns([2.22, 0.5, 0.01008, 0.176], [3.678, 1.85, 0.01008, 0.176])
    torch.testing.assert_close(vs, expected_vs)
    torch.testing.assert_close(advantages, expected_advantages)


def test_truncated_importance_weights_clip_at_rho_bar() -> None:
    weights = truncated_importance_weights(torch.tensor(RATIOS).log(), rho_bar=1.2)
    torch.testing.assert_close(weights, torch.tensor([1.2, 0.5, 1.2, 0.8]))


def test_on_policy_vtrace_is_the_n_step_return_and_the_weights_are_one() -> None:
    trajectory = _trajectory()
    on_policy = torch.zeros(4, 2, dtype=torch.float64)
    vs, advantages = vtrace(**trajectory, log_ratio=on_policy, gamma=GAMMA)
    g = GAMMA
    # Column 0: steps 0-1 end with the termination; steps 2-3 bootstrap from V(x'_3) = 0.8.
    # Column 1: steps 0-1 bootstrap from V(x'_1) = 3.0 (truncation); steps 2-3 as column 0.
    n_step = _columns(
        [1.0 + g * 2.0, 2.0, 0.5 + g * 1.0 + g**2 * 0.8, 1.0 + g * 0.8],
        [1.0 + g * 2.0 + g**2 * 3.0, 2.0 + g * 3.0, 0.5 + g * 1.0 + g**2 * 0.8, 1.0 + g * 0.8],
    )
    torch.testing.assert_close(vs, n_step)
    # The advantage is the one-step TD error towards the next step's target.
    next_target = _columns(
        [n_step[1, 0], 0.0, n_step[3, 0], 0.8], [n_step[1, 1], 3.0, n_step[3, 1], 0.8]
    )
    torch.testing.assert_close(
        advantages, trajectory["reward"] + g * next_target - trajectory["value"]
    )
    weights = truncated_importance_weights(on_policy, rho_bar=1.0)
    assert torch.equal(weights, torch.ones_like(weights))


@pytest.mark.parametrize("rho_bar", [0.5, 1.0, 3.0])
def test_vtrace_clips_rho_and_c_separately(rho_bar: float) -> None:
    """With c_bar tiny the trace is cut after one step: v_s - V = delta (rho clipped at rho_bar)."""
    trajectory = _trajectory()
    log_ratio = _columns(RATIOS, RATIOS).log()
    vs, _ = vtrace(**trajectory, log_ratio=log_ratio, gamma=GAMMA, rho_bar=rho_bar, c_bar=1e-12)
    rho = min(rho_bar, RATIOS[0])
    expected = 0.5 + rho * (1.0 + GAMMA * 1.0 - 0.5)
    assert math.isclose(vs[0, 0].item(), expected, rel_tol=1e-9)
