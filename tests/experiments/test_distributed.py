"""Rank roles and rollouts of the experiment across machines, without a launcher: configs
composed with Hydra and checked against simulated torchrun/Slurm environments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from experiments.common.config import ConfigError
from experiments.distributed import build_launched_scheme, decode_rollout, encode_rollout, launch_of
from experiments.rollout import Rollout

CONF = Path(__file__).resolve().parents[2] / "conf"
TORCHRUN = {"RANK": "1", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
SLURM = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
         "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "77"}  # fmt: skip


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("sync", ["pipe", "shared-mem"])
@pytest.mark.parametrize("environ", [TORCHRUN, SLURM], ids=["torchrun", "slurm"])
def test_a_single_host_scheme_under_a_launch_is_a_config_error(sync, environ):
    with pytest.raises(ConfigError, match=f"sync={sync} keeps its workers on one machine"):
        launch_of(compose_cfg(f"sync={sync}"), environ)


def test_distributed_without_a_launcher_says_how_to_launch():
    with pytest.raises(
        ConfigError, match=re.escape("torchrun --nproc-per-node=3 run.py sync=distributed")
    ):
        launch_of(compose_cfg("sync=distributed"), {})


def test_the_distributed_options_are_typed_and_checked():
    with pytest.raises(HydraException, match=r"sync\.port=soon"):
        compose_cfg("sync=distributed", "sync.port=soon")
    with pytest.raises(ConfigError, match=r"sync\.port=70000 is not a TCP port"):
        launch_of(compose_cfg("sync=distributed", "sync.port=70000"), TORCHRUN)
    with pytest.raises(ConfigError, match=r"sync\.join_timeout=0"):
        launch_of(compose_cfg("sync=distributed", "sync.join_timeout=0"), TORCHRUN)


def test_each_rank_builds_its_part_of_the_scheme_from_the_launch():
    cfg = compose_cfg("sync=distributed", "strategy=state_dict", "sync.timeout=3")
    worker = build_launched_scheme(cfg, launch_of(cfg, TORCHRUN))
    assert (worker.worker_id, worker.num_workers, worker.host, worker.port) == (
        0, 2, "127.0.0.1", 29501,
    )  # fmt: skip
    assert (worker.timeout, worker.strategy.extract_as) == (3, "state_dict")
    trainer = build_launched_scheme(cfg, launch_of(compose_cfg("experiment=multinode"), SLURM))
    assert (trainer.worker_id, trainer.num_workers, trainer.host) == (None, 3, "node1")


def test_a_rollout_crosses_as_json_and_one_buffer():
    trajectory = {
        "obs": torch.randn(5, 2, 4),
        "action": torch.ones(5, 2, dtype=torch.int64),
        "terminated": torch.rand(5, 2) > 0.5,
        "pixels": torch.randint(0, 255, (5, 2, 3, 3), dtype=torch.uint8),
    }
    rollout = Rollout(trajectory, torch.tensor([21.0, 9.0]), policy_version=7)
    meta, data = encode_rollout(rollout)
    back = decode_rollout(meta, data.clone())
    assert back.policy_version == 7 and torch.equal(back.episode_returns, rollout.episode_returns)
    assert back.trajectory.keys() == trajectory.keys()
    for key, value in trajectory.items():
        assert back.trajectory[key].dtype == value.dtype, key
        assert torch.equal(back.trajectory[key], value), key
