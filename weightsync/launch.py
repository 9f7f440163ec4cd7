"""Where this process stands in a multi-process launch: torchrun's or Slurm's environment.

:meth:`LaunchInfo.from_environ` reads what the launcher exported, so that a job spanning machines
needs no addresses on its command line:

* ``torchrun``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``;
* Slurm (``srun``, and ``hydra-submitit-launcher``, which runs each task through ``srun``):
  ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, ``SLURM_JOB_NUM_NODES``, the first host of
  ``SLURM_JOB_NODELIST`` as the master (unless ``MASTER_ADDR`` is set) and a master port derived
  from ``SLURM_JOB_ID`` (unless ``MASTER_PORT`` is set), so that two jobs sharing a node do not
  collide.

Rank 0 is the trainer; every other rank is a worker (worker id ``rank - 1``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

#: Slurm jobs without ``MASTER_PORT`` use ``SLURM_PORT_BASE + job id % SLURM_PORT_SPAN``.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class LaunchInfo:
    """One process's place in a launch; ``launcher`` is ``"torchrun"`` or ``"slurm"``."""

    launcher: str
    rank: int
    world_size: int
    local_rank: int
    num_nodes: int
    master_addr: str
    master_port: int

    @property
    def worker_id(self) -> int | None:
        """None on the trainer (rank 0), else ``rank - 1``."""
        return self.rank - 1 if self.rank else None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> LaunchInfo | None:
        """The launch described by ``environ`` (default ``os.environ``); None outside one."""
        env = os.environ if environ is None else environ
        try:
            if "RANK" in env and "WORLD_SIZE" in env:
                world = int(env["WORLD_SIZE"])
                per_node = int(env.get("LOCAL_WORLD_SIZE", world))
                return cls(
                    "torchrun", int(env["RANK"]), world, int(env.get("LOCAL_RANK", 0)),
                    max(1, world // max(1, per_node)), env["MASTER_ADDR"],
                    int(env["MASTER_PORT"]),
                )  # fmt: skip
            if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
                nodes = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))
                master = env.get("MASTER_ADDR") or first_host(nodes)
                port = env.get("MASTER_PORT")
                if port is None:
                    port = SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % SLURM_PORT_SPAN
                return cls(
                    "slurm", int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                    int(env.get("SLURM_LOCALID", 0)),
                    int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", 1))), master,
                    int(port),
                )  # fmt: skip
        except (KeyError, ValueError) as err:
            raise ValueError(
                f"the launcher's environment is incomplete or malformed ({err!r}): torchrun sets "
                "RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; Slurm sets SLURM_PROCID, "
                "SLURM_NTASKS, SLURM_JOB_NODELIST and SLURM_JOB_ID (or export MASTER_ADDR and "
                "MASTER_PORT)"
            ) from None
        return None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm node list: ``"gpu[07-09,12],cpu1"`` -> ``"gpu07"``."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read a host from the Slurm node list {nodelist!r}")
    prefix, ranges = match.groups()
    return prefix + (re.split(r"[-,]", ranges)[0] if ranges else "")
