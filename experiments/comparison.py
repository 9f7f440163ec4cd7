"""Compare the jobs of a sweep: one table row per job, one return-vs-frames curve per job.

:class:`SweepComparison` is a Hydra callback (``hydra.callbacks`` in ``conf/hydra/default.yaml``):
at the end of ``python run.py -m ...`` it reads every job's ``summary.json`` and
``metrics.jsonl`` in the sweep directory, prints the table and writes ``comparison.csv``,
``comparison.md`` and ``comparison.png`` next to the job directories. :func:`compare` does the
same for any sweep directory, e.g. one copied from another machine.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig

from experiments.metrics import METRICS_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

COLUMNS = (
    "job",
    "sync",
    "strategy",
    "status",
    "final_return",
    "frames_per_s",
    "sync_latency_p50_ms",
    "sync_latency_p95_ms",
    "staleness_mean",
    "bytes_moved",
    "weights_match",
)


@dataclass
class Job:
    """One finished job of the sweep: its name, summary and return curve."""

    name: str
    summary: dict[str, Any]
    curve: list[tuple[int, float]]  # (frames, episode return) for iterations where one ended

    def row(self) -> dict[str, Any]:
        return {"job": self.name} | {c: self.summary.get(c) for c in COLUMNS[1:]}


class SweepComparison(Callback):
    """Hydra callback: compare the sweep's jobs once all have run."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        compare(Path(config.hydra.sweep.dir))


def compare(sweep_dir: Path) -> list[Job]:
    """Write ``comparison.{csv,md,png}`` for the jobs in ``sweep_dir``, print the table."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        log.warning("no job in %s wrote a %s: nothing to compare", sweep_dir, SUMMARY_FILE)
        return jobs
    table = markdown_table([job.row() for job in jobs])
    (sweep_dir / "comparison.md").write_text(table)
    write_csv(sweep_dir / "comparison.csv", [job.row() for job in jobs])
    plot_returns(sweep_dir / "comparison.png", jobs)
    print(f"\nComparison of {len(jobs)} jobs ({sweep_dir}/comparison.{{csv,md,png}}):\n")
    print(table)
    return jobs


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` with a summary, in job-number order."""
    jobs = []
    for summary_path in sorted(sweep_dir.glob(f"*/{SUMMARY_FILE}"), key=_job_number):
        job_dir = summary_path.parent
        summary = json.loads(summary_path.read_text())
        jobs.append(Job(_job_name(job_dir, summary), summary, _return_curve(job_dir)))
    return jobs


def _job_number(summary_path: Path) -> tuple[int, str]:
    head = summary_path.parent.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, summary_path.parent.name)


def _job_name(job_dir: Path, summary: dict[str, Any]) -> str:
    """The job's command-line overrides (what the sweep varied), else its sync/strategy."""
    overrides_path = job_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else None
    return " ".join(overrides) if overrides else f"{summary['sync']}/{summary['strategy']}"


def _return_curve(job_dir: Path) -> list[tuple[int, float]]:
    path = job_dir / METRICS_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["frames"], r["episode_return"]) for r in records if r["episode_return"] is not None]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (all with the same keys)."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_returns(path: Path, jobs: list[Job]) -> None:
    """Episode return versus frames collected, one line per job."""
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.subplots()
    for job in jobs:
        if job.curve:
            frames, returns = zip(*job.curve, strict=True)
            axes.plot(frames, returns, label=job.name, linewidth=1.2)
    axes.set_xlabel("frames collected by the workers")
    axes.set_ylabel("worker episode return")
    axes.set_title("Return versus frames, per job")
    axes.grid(alpha=0.3)
    if any(job.curve for job in jobs):
        axes.legend(fontsize="small")
    figure.savefig(path, dpi=100)
