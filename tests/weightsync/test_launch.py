"""Reading torchrun's and Slurm's environment (no launcher needed: the variables are simulated)."""

from __future__ import annotations

import pytest

from weightsync import DistributedWeightSyncScheme
from weightsync.launch import SLURM_PORT_BASE, LaunchInfo, first_host

TORCHRUN = {"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "node-a", "MASTER_PORT": "29500"}  # fmt: skip
SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[07-08]"}  # fmt: skip


def test_torchrun_variables():
    info = LaunchInfo.from_environ(TORCHRUN)
    assert info == LaunchInfo("torchrun", 2, 4, 0, 2, "node-a", 29500)
    assert info.worker_id == 1


def test_slurm_variables_as_submitit_sets_them():
    info = LaunchInfo.from_environ(SLURM)
    assert info == LaunchInfo("slurm", 3, 4, 1, 2, "gpu07", SLURM_PORT_BASE + 123)
    exported = LaunchInfo.from_environ({**SLURM, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "7"})
    assert (exported.master_addr, exported.master_port) == ("10.0.0.1", 7)


def test_no_launcher_and_a_broken_one():
    assert LaunchInfo.from_environ({}) is None
    with pytest.raises(ValueError, match="MASTER_PORT"):
        LaunchInfo.from_environ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "x"})
    with pytest.raises(ValueError, match="found no launcher"):
        DistributedWeightSyncScheme.from_env(environ={})


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("gpu[07-09,12],cpu1", "gpu07"), ("node1,node2", "node1"), ("a-b[3]", "a-b3"), ("x", "x")],
)
def test_first_host_of_a_node_list(nodelist, host):
    assert first_host(nodelist) == host


def test_from_env_makes_rank_0_the_trainer_and_the_port_follows_the_master_port():
    trainer = DistributedWeightSyncScheme.from_env(environ={**TORCHRUN, "RANK": "0"}, timeout=3)
    assert (trainer.worker_id, trainer.num_workers) == (None, 3)
    assert (trainer.host, trainer.port, trainer.timeout) == ("node-a", 29501, 3)
    worker = DistributedWeightSyncScheme.from_env(environ=SLURM, port_offset=2)
    assert (worker.worker_id, worker.port) == (2, SLURM_PORT_BASE + 125)
