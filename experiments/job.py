"""One job of ``run.py``: validate the config, train (or serve as a worker rank), and turn the
outcome into an exit code or, in a sweep, into the objective the sweeper reads.

Exit codes of a single run: 0 completed, 1 failed (a worker, an error), 2 invalid configuration,
130 interrupted. In a sweep (``-m``) a job that fails or is invalid is recorded in its
``summary.json`` and the other jobs run; the sweep's comparison names it and exits 1.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from experiments.common.config import ConfigError, plain
from experiments.common.processes import spawnable_start_method
from experiments.config import validate
from experiments.distributed import launch_of, serve_rank
from experiments.metrics import SUMMARY_FILE, write_summary
from experiments.train import train

EXIT_CONFIG_ERROR = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # the shell's code for a Ctrl-C

log = logging.getLogger("run")


def run_job(cfg: DictConfig) -> float:
    """Run the job ``cfg`` describes (this process's part of it, under a launcher) and return
    its :func:`objective`; exits with the codes ``run.py`` documents when not in a sweep."""
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        launch = launch_of(cfg)  # None for a plain `python run.py`
        if launch is not None:  # rank 0 trains, every other rank is a worker
            cfg.run.num_workers = launch.world_size - 1
        validate(cfg)
    except ConfigError as err:
        print(f"Invalid configuration: {err}", file=sys.stderr)
        if not in_sweep:
            sys.exit(EXIT_CONFIG_ERROR)
        write_summary(out_dir, {"status": "invalid_config", "error": str(err)})
        return math.nan  # the other jobs of the sweep run; the comparison names this one

    with spawnable_start_method():  # a launcher's own start method (loky) breaks spawn
        if launch is not None and launch.rank > 0:
            serve_rank(cfg, launch)  # a worker rank: collects until rank 0 is done
            return math.nan
        try:
            summary = train(cfg, out_dir, launch)
        except Exception as err:
            if not in_sweep:
                raise
            log.exception("job failed")
            summary = _summary_after(out_dir, err)
    if summary["status"] == "interrupted":
        sys.exit(EXIT_INTERRUPTED)
    if summary["status"] != "completed" and not in_sweep:
        sys.exit(EXIT_FAILED)
    return objective(summary, plain(cfg.objective))


def objective(summary: dict[str, Any], key: str) -> float:
    """What the sweeper optimises: ``summary[key]``, NaN for a failed job or a missing value
    (Optuna records a NaN trial as failed)."""
    value = summary.get(key)
    return math.nan if summary["status"] != "completed" or value is None else float(value)


def _summary_after(out_dir: Path, err: Exception) -> dict[str, Any]:
    """The summary a failed job left, or one saying why it left none."""
    path = out_dir / SUMMARY_FILE
    if path.exists():
        return json.loads(path.read_text())
    summary = {"status": "error", "error": f"{type(err).__name__}: {err}"}
    write_summary(out_dir, summary)
    return summary
