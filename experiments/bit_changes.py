"""How much of a model one PPO update changes, bit for bit: would delta updates pay?

``python -m experiments.bit_changes model=mlp_1m [updates=5] [any run.py override]`` runs
``updates`` PPO updates of the framework's policy on rollouts of its own environment (as
``run.py`` does, in one process) and prints, per update, the fraction of floating-point elements
whose float32 bits changed, and whose bfloat16 bits (the value rounded to bf16) changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

import experiments.config  # noqa: F401  (registers the config schema)
from experiments.factory import build_learner, env_factory, policy_factory
from experiments.rollout import collect_rollout

CONF = Path(__file__).resolve().parents[1] / "conf"


def changed_fractions(before: list[torch.Tensor], after: list[torch.Tensor]) -> dict[str, float]:
    """Fractions of elements whose float32 bits, and whose bfloat16-rounded bits, differ."""
    total = sum(t.numel() for t in before)
    fp32 = sum(int((b.view(torch.int32) != a.view(torch.int32)).sum())
               for b, a in zip(before, after, strict=True))  # fmt: skip
    bf16 = sum(int((b.bfloat16().view(torch.int16) != a.bfloat16().view(torch.int16)).sum())
               for b, a in zip(before, after, strict=True))  # fmt: skip
    return {"fp32_changed": fp32 / total, "bf16_changed": bf16 / total}


def main(argv: list[str]) -> None:
    updates = int(next((a.split("=", 1)[1] for a in argv if a.startswith("updates=")), 5))
    overrides = [a for a in argv if not a.startswith("updates=")]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    torch.manual_seed(cfg.seed)
    policy = policy_factory(cfg)()
    learner = build_learner(cfg, policy, cfg.seed)
    env = env_factory(cfg)(device="cpu", seed=cfg.seed)
    floats = [p for p in policy.state_dict().values() if p.is_floating_point()]
    for update in range(1, updates + 1):
        with torch.no_grad():
            batch = collect_rollout(env, policy, cfg.run.rollout_steps)
        before = [t.clone() for t in floats]
        stats = learner.update(batch)
        row = {"update": update, "elements": sum(t.numel() for t in floats),
               **changed_fractions(before, floats), "approx_kl": stats["approx_kl"]}  # fmt: skip
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
