"""Run an experiment: ``python run.py [group=option ...]``; compare with ``python run.py -m ...``.

The config (``conf/config.yaml``) is composed by Hydra and typed by ``experiments/config.py``; it
is validated here before any process starts. ``main`` returns the job's ``objective`` (a field of
``summary.json``, ``final_return`` by default) to the sweeper, so sweepers that optimise it
(``hparams_search=ppo_optuna``) can tune the run. Exit codes of a single run: 0 completed,
1 failed (a worker, an error; Hydra's own composition errors are 1 too), 2 invalid configuration,
130 interrupted. In a sweep (``-m``) a job that fails or is invalid is recorded in its
``summary.json`` and the other jobs run; the sweep's comparison names it and exits 1.
The benchmark has its own entry point: ``python -m experiments.bench``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import experiments.config  # noqa: F401  (registers the config's schema, which Hydra composes on)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    # Imported here, not at the top: every worker the job spawns re-imports this file (as
    # ``__mp_main__``) and needs none of the trainer's modules, each second of import counted
    # once per worker.
    from experiments.job import run_job

    return run_job(cfg)


if __name__ == "__main__":
    main()
