"""Compare the jobs of a sweep: a table row per job, the return curves and what each sync cost.

:class:`SweepComparison` is a Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): at the
end of ``python run.py -m ...`` it reads every job's ``summary.json`` and ``metrics.jsonl`` in the
sweep directory, prints the table and writes ``comparison.csv``, ``comparison.md`` and
``comparison.png`` next to the job directories, then says how many jobs failed and, if any did,
ends the sweep with exit code 1. :func:`compare` does the same for any sweep directory, e.g. one
copied from another machine.

Jobs are named by their command-line overrides (``.hydra/overrides.yaml``); the plot's legend
leaves out the overrides every job shares. Jobs that differ only by ``seed=`` are one
configuration: ``comparison_seeds.{csv,md}`` gives the mean and standard deviation over seeds
per configuration, and the plot draws one mean curve per configuration with a band of one
standard deviation.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from omegaconf import DictConfig

from experiments.metrics import METRICS_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

EXIT_FAILED = 1
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
    "staleness_max",
    "rollouts_dropped",
    "importance_ratio_mean",
    "importance_ratio_std",
    "bytes_moved",
    "weights_match",
)
NUMERIC = COLUMNS[4:-1]  # averaged over seeds
SEED_KEY = "seed"


@dataclass
class Job:
    """One job of the sweep: its name (overrides), summary and return curve."""

    name: str
    overrides: list[str]
    summary: dict[str, Any]
    curve: list[tuple[int, float]]  # (frames, episode return) for iterations where one ended

    def row(self) -> dict[str, Any]:
        return {"job": self.name} | {c: self.summary.get(c) for c in COLUMNS[1:]}

    @property
    def failed(self) -> bool:
        return self.summary.get("status") != "completed"

    @property
    def configuration(self) -> tuple[str, ...]:
        """The overrides without the seed: jobs with equal configurations differ by seed only."""
        return tuple(o for o in self.overrides if o.split("=", 1)[0].lstrip("+~") != SEED_KEY)


class SweepComparison(Callback):
    """Hydra callback: compare the sweep's jobs once all have run; exit 1 if any failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        jobs = compare(Path(config.hydra.sweep.dir))
        failed = [job for job in jobs if job.failed]
        if failed:
            details = "; ".join(
                f"{job.name or 'job'}: {job.summary.get('status')}"
                + (f" ({job.summary['error']})" if job.summary.get("error") else "")
                for job in failed
            )
            print(f"\n{len(failed)} of {len(jobs)} jobs failed: {details}", flush=True)
            sys.exit(EXIT_FAILED)
        print(f"\nAll {len(jobs)} jobs completed.", flush=True)


def compare(sweep_dir: Path) -> list[Job]:
    """Write ``comparison.{csv,md,png}`` (and ``comparison_seeds.{csv,md}`` when jobs differ by
    seed only) for the jobs in ``sweep_dir``, print the tables; return the jobs."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        log.warning("no job in %s wrote a %s: nothing to compare", sweep_dir, SUMMARY_FILE)
        return jobs
    rows = [job.row() for job in jobs]
    table = markdown_table(rows)
    (sweep_dir / "comparison.md").write_text(table)
    write_csv(sweep_dir / "comparison.csv", rows)
    print(f"\nComparison of {len(jobs)} jobs ({sweep_dir}/comparison.{{csv,md,png}}):\n")
    print(table)
    groups = seed_groups(jobs)
    if any(len(members) > 1 for members in groups.values()):
        seed_rows = [seed_row(config, members) for config, members in groups.items()]
        seed_table = markdown_table([_display(row) for row in seed_rows])
        (sweep_dir / "comparison_seeds.md").write_text(seed_table)
        write_csv(sweep_dir / "comparison_seeds.csv", seed_rows)
        print(f"Mean ± standard deviation over seeds ({sweep_dir}/comparison_seeds.{{csv,md}}):\n")
        print(seed_table)
    plot(sweep_dir / "comparison.png", jobs)
    return jobs


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (one with ``.hydra/`` or a summary), in job-number
    order; a job that wrote no summary is listed with status ``no_summary``."""
    job_dirs = {p.parent for p in sweep_dir.glob(f"*/{SUMMARY_FILE}")}
    job_dirs |= {p.parent for p in sweep_dir.glob("*/.hydra")}
    jobs = []
    for job_dir in sorted(job_dirs, key=_job_number):
        path = job_dir / SUMMARY_FILE
        summary = json.loads(path.read_text()) if path.exists() else {"status": "no_summary"}
        overrides = _overrides(job_dir)
        name = " ".join(overrides) or f"{summary.get('sync')}/{summary.get('strategy')}"
        jobs.append(Job(name, overrides, summary, _return_curve(job_dir)))
    return jobs


def _job_number(job_dir: Path) -> tuple[int, str]:
    head = job_dir.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, job_dir.name)


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def _return_curve(job_dir: Path) -> list[tuple[int, float]]:
    path = job_dir / METRICS_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["frames"], r["episode_return"]) for r in records if r["episode_return"] is not None]


def labels(jobs: list[Job]) -> dict[str, str]:
    """Each job's name without the overrides that every job shares (the legend's labels)."""
    shared = set.intersection(*(set(job.overrides) for job in jobs)) if len(jobs) > 1 else set()
    return {job.name: " ".join(o for o in job.overrides if o not in shared) or job.name
            for job in jobs}  # fmt: skip


def seed_groups(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs by configuration (overrides without ``seed=``), in order of first appearance."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(" ".join(job.configuration) or "(defaults)", []).append(job)
    return groups


def seed_row(config: str, members: list[Job]) -> dict[str, Any]:
    """One configuration: its seeds' count, how many completed, mean and spread per figure."""
    row: dict[str, Any] = {
        "configuration": config,
        "seeds": len(members),
        "completed": sum(not job.failed for job in members),
    }
    for column in NUMERIC:
        values = [job.summary[column] for job in members if job.summary.get(column) is not None]
        row[f"{column}_mean"] = statistics.fmean(values) if values else None
        row[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def _display(row: dict[str, Any]) -> dict[str, Any]:
    """A seed row for Markdown: ``mean ± std`` in one cell per figure."""
    shown = {key: row[key] for key in ("configuration", "seeds", "completed")}
    for column in NUMERIC:
        mean, std = row[f"{column}_mean"], row[f"{column}_std"]
        shown[column] = (
            None if mean is None else _cell(mean) + ("" if std is None else f" ± {_cell(std)}")
        )
    return shown


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


def plot(path: Path, jobs: list[Job]) -> None:
    """Top: episode return versus frames (one line per job, or per configuration with a band
    over its seeds). Bottom: what each job's syncs cost: latency p50/p95, staleness (mean, and
    max as a marker), bytes, and the importance ratios pi/mu of its batches (mean +- std)."""
    figure = Figure(figsize=(14, 9), layout="constrained")
    grid = figure.add_gridspec(2, 4, height_ratios=(3, 2))
    _plot_returns(figure.add_subplot(grid[0, :]), jobs)
    _plot_costs([figure.add_subplot(grid[1, i]) for i in range(4)], jobs)
    figure.savefig(path, dpi=100)


def _plot_returns(axes: Any, jobs: list[Job]) -> None:
    groups = seed_groups(jobs)
    by_seed = any(len(members) > 1 for members in groups.values())
    names = labels([Job(config, list(members[0].configuration), {}, []) for config, members
                    in groups.items()]) if by_seed else labels(jobs)  # fmt: skip
    for config, members in groups.items() if by_seed else [(job.name, [job]) for job in jobs]:
        frames, means, stds = _mean_curve([job.curve for job in members])
        if not frames:
            continue
        (line,) = axes.plot(frames, means, label=names[config], linewidth=1.2)
        if len(members) > 1:
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            axes.fill_between(frames, low, high, color=line.get_color(), alpha=0.2)
    axes.set_xlabel("frames collected by the workers")
    axes.set_ylabel("worker episode return")
    title = "mean over seeds ± one standard deviation" if by_seed else "per job"
    axes.set_title(f"Return versus frames, {title}")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small")


def _mean_curve(
    curves: list[list[tuple[int, float]]],
) -> tuple[list[int], list[float], list[float]]:
    """Per frame count, the mean and standard deviation of the curves that have a value there."""
    at: dict[int, list[float]] = {}
    for curve in curves:
        for frames, value in curve:
            at.setdefault(frames, []).append(value)
    frames = sorted(at)
    means = [statistics.fmean(at[f]) for f in frames]
    stds = [statistics.pstdev(at[f]) for f in frames]
    return frames, means, stds


def _plot_costs(axes: list[Any], jobs: list[Job]) -> None:
    names = labels(jobs)
    ticks = [names[job.name] for job in jobs]
    positions = range(len(jobs))

    def values(key: str, scale: float = 1.0) -> list[float]:
        return [(job.summary.get(key) or 0.0) * scale for job in jobs]

    width = 0.4
    latency, staleness, moved, ratio = axes
    latency.bar(
        [p - width / 2 for p in positions], values("sync_latency_p50_ms"), width, label="p50"
    )
    latency.bar(
        [p + width / 2 for p in positions], values("sync_latency_p95_ms"), width, label="p95"
    )
    latency.set_title("trainer blocked per sync (ms)")
    latency.legend(fontsize="small")
    staleness.bar(positions, values("staleness_mean"))
    staleness.plot(positions, values("staleness_max"), "k_", markersize=12, label="max")
    staleness.set_title("staleness (updates behind, mean)")
    staleness.legend(fontsize="small")
    ratio.bar(positions, values("importance_ratio_mean"), yerr=values("importance_ratio_std"))
    ratio.set_title("importance ratio pi/mu (mean ± std)")
    moved.bar(positions, values("bytes_moved", 1e-6))
    moved.set_title("weights moved (MB)")
    for ax in axes:
        ax.set_xticks(list(positions), ticks, rotation=30, ha="right", fontsize="small")
        ax.grid(axis="y", alpha=0.3)
