"""Merge the per-job results of a sweep into one table: ``python -m experiments.bench.collect DIR``.

Each job of ``python -m experiments.bench -m ...`` writes ``results.json`` in its own
output directory; this reads every one under ``DIR`` (the sweep directory Hydra printed), writes
``DIR/results.md`` and ``DIR/results.json`` with all cases, and prints the table (the part of
BENCHMARKS.md that a rerun regenerates).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from experiments.bench import report
from experiments.bench.models import BENCH_MODELS

_SCHEME_ORDER = {"none": 0, "shared-mem": 1, "pipe": 2}


def collect(sweep_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every case found under ``sweep_dir`` (sorted) and the first job's machine record."""
    results: list[dict[str, Any]] = []
    machine: dict[str, Any] = {}
    for path in sorted(sweep_dir.glob("*/results.json")):
        payload = json.loads(path.read_text())
        machine = machine or payload["machine"]
        results += payload["results"]
    models = list(BENCH_MODELS)
    results.sort(
        key=lambda r: (
            models.index(r["model"]) if r["model"] in models else len(models),
            _SCHEME_ORDER.get(r["scheme"], 9),
            r["strategy"],
            r["workers"],
        )
    )
    return results, machine


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    sweep_dir = Path(argv[0])
    results, machine = collect(sweep_dir)
    if not results:
        print(f"no */results.json under {sweep_dir}", file=sys.stderr)
        return 1
    text = report.write(sweep_dir, results, machine, {"collected_from": str(sweep_dir)})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
