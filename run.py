"""Run an experiment: ``python run.py [group=option ...]``; compare with ``python run.py -m ...``.

The config (``conf/``) is composed by Hydra and typed by ``experiments/config.py``; it is
validated here before any process starts. ``job`` picks what runs: ``train`` (the actor-learner
loop, experiments/train.py) or ``bench`` (the weight-sync benchmark, experiments/bench/).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments.config import ConfigError, validate
from experiments.distributed import launch_of, serve_rank
from experiments.train import train

EXIT_CONFIG_ERROR = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        launch = launch_of(cfg)  # None for a plain `python run.py`
        if launch is not None:  # rank 0 trains, every other rank is a worker
            cfg.run.num_workers = launch.world_size - 1
        validate(cfg)
    except ConfigError as err:
        print(f"Invalid configuration: {err}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)

    if cfg.job == "bench":
        from experiments import bench  # imported on demand: each job loads only what it runs

        bench.run(cfg)
        return

    if launch is not None and launch.rank > 0:
        serve_rank(cfg, launch)
        return
    hydra_cfg = HydraConfig.get()
    summary = train(cfg, Path(hydra_cfg.runtime.output_dir), launch)
    if summary["status"] == "interrupted":
        sys.exit(EXIT_INTERRUPTED)
    # A failed run ends a single run with an error code; in a sweep the other jobs go on and
    # the comparison table shows its status.
    if summary["status"] != "completed" and hydra_cfg.mode == RunMode.RUN:
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
