"""``python -m experiments.bench [sync=... strategy=... bench.key=value ...]``: the benchmark's
entry point, composed from ``conf/bench.yaml`` (``-m`` sweeps schemes and strategies).

Each job writes ``results.json`` and ``results.md`` into its output directory;
``python -m experiments.bench.collect <sweep dir>`` merges a sweep's into one table.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments.bench.runner import run
from experiments.common.processes import spawnable_start_method

CONF = Path(__file__).resolve().parents[2] / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="bench")
def main(cfg: DictConfig) -> None:
    with spawnable_start_method():
        run(cfg)


if __name__ == "__main__":
    main()
