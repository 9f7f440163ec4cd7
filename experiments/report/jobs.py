"""A sweep's jobs as the report reads them, and the rows it shows: one per job, or one per
configuration when jobs differ by ``seed=`` only.

A job is what its directory holds: the overrides (``.hydra/overrides.yaml``), ``summary.json``
and the return curve of ``metrics.jsonl``. A :class:`Row` is what one bar, one curve and one
table line stand for; every figure is drawn from rows, so a seed group is aggregated (mean ± std)
in every panel the same way. Summary fields are read as they come: a field the training loop
starts to write appears without a change here.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from experiments.metrics import METRICS_FILE, SUMMARY_FILE
from experiments.report.labels import short_labels

SEED_KEY = "seed"


@dataclass
class Job:
    """One job of the sweep: its number, overrides, summary and return curve."""

    number: int | None
    overrides: list[str]
    summary: dict[str, Any]
    curve: list[tuple[int, float]]  # (frames, episode return) for iterations where one ended

    @property
    def name(self) -> str:
        """The full overrides: what the tables name the job by."""
        return (
            " ".join(self.overrides) or f"{self.summary.get('sync')}/{self.summary.get('strategy')}"
        )

    @property
    def failed(self) -> bool:
        return self.summary.get("status") != "completed"

    @property
    def configuration(self) -> tuple[str, ...]:
        """The overrides without the seed: jobs with equal configurations differ by seed only."""
        return tuple(o for o in self.overrides if o.split("=", 1)[0].lstrip("+~") != SEED_KEY)


@dataclass
class Row:
    """What one bar, curve or line of the report stands for: a job, or a configuration's seeds."""

    label: str
    jobs: list[Job]

    def values(self, field: str) -> list[float]:
        """The numbers ``field`` holds over the row's jobs (jobs without one left out)."""
        found = [job.summary.get(field) for job in self.jobs]
        return [float(v) for v in found if _is_number(v)]

    def mean_std(self, field: str) -> tuple[float | None, float | None]:
        """Mean and sample standard deviation of ``field`` (std None for fewer than 2 values)."""
        values = self.values(field)
        mean = statistics.fmean(values) if values else None
        return mean, statistics.stdev(values) if len(values) > 1 else None

    def curve(self) -> tuple[list[int], list[float], list[float]]:
        """The mean return curve over the row's jobs and its spread (see :func:`mean_curve`)."""
        return mean_curve([job.curve for job in self.jobs])

    @property
    def failures(self) -> list[str]:
        return [str(job.summary.get("status")) for job in self.jobs if job.failed]


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (one with ``.hydra/`` or a summary), in job-number
    order; a job that wrote no summary is listed with status ``no_summary``."""
    job_dirs = {p.parent for p in sweep_dir.glob(f"*/{SUMMARY_FILE}")}
    job_dirs |= {p.parent for p in sweep_dir.glob("*/.hydra")}
    jobs = []
    for job_dir in sorted(job_dirs, key=_job_number):
        path = job_dir / SUMMARY_FILE
        summary = json.loads(path.read_text()) if path.exists() else {"status": "no_summary"}
        number = _job_number(job_dir)[0]
        jobs.append(Job(number, _overrides(job_dir), summary, _return_curve(job_dir)))
    return jobs


def _job_number(job_dir: Path) -> tuple[int | None, str]:
    head = job_dir.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else None, job_dir.name)


def _overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def _return_curve(job_dir: Path) -> list[tuple[int, float]]:
    path = job_dir / METRICS_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["frames"], r["episode_return"]) for r in records if r["episode_return"] is not None]


def has_seed_groups(jobs: list[Job]) -> bool:
    """Whether some jobs differ by ``seed=`` only (then the report shows configurations)."""
    return len({job.configuration for job in jobs}) < len(jobs)


def job_rows(jobs: list[Job]) -> list[Row]:
    """One row per job, labelled ``#<number>`` and the overrides that differ between jobs."""
    differing = short_labels([job.overrides for job in jobs])
    rows = []
    for job, label in zip(jobs, differing, strict=True):
        number = f"#{job.number}" if job.number is not None else ""
        failed = f"({job.summary.get('status')})" if job.failed else ""
        rows.append(Row(_joined(number, label, failed) or job.name, [job]))
    return rows


def configuration_rows(jobs: list[Job]) -> list[Row]:
    """One row per configuration (overrides without ``seed=``), in order of first appearance,
    labelled by the overrides that differ between configurations and its number of seeds."""
    groups: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.configuration, []).append(job)
    differing = short_labels([list(config) for config in groups])
    rows = []
    for label, members in zip(differing, groups.values(), strict=True):
        failed = sum(job.failed for job in members)
        count = f"({len(members)} seeds" + (f", {failed} failed)" if failed else ")")
        rows.append(Row(_joined(label or "defaults", count), members))
    return rows


def rows_of(jobs: list[Job]) -> list[Row]:
    """What the report shows: configurations when jobs differ by seed only, else jobs."""
    return configuration_rows(jobs) if has_seed_groups(jobs) else job_rows(jobs)


def configuration_name(row: Row) -> str:
    """A configuration row's full overrides (what its table line names it by)."""
    return " ".join(row.jobs[0].configuration) or "(defaults)"


def numeric_fields(jobs: list[Job]) -> list[str]:
    """Every summary field that holds a number in some job, in the order the summaries list them."""
    fields: dict[str, None] = {}
    for job in jobs:
        fields |= {key: None for key, value in job.summary.items() if _is_number(value)}
    return list(fields)


def mean_curve(
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _joined(*parts: str) -> str:
    return " ".join(part for part in parts if part)
