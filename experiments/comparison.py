"""Compare the jobs of a sweep: a table row per job, the return curves and what each sync cost.

:class:`SweepComparison` is a Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``): at the
end of ``python run.py -m ...`` it reads every job's ``summary.json`` and ``metrics.jsonl`` in the
sweep directory, prints the table and writes ``comparison.csv``, ``comparison.md`` and
``comparison.png`` next to the job directories, then says how many jobs failed and, if any did,
ends the sweep with exit code 1. :func:`compare` does the same for any sweep directory, e.g. one
copied from another machine.

The tables name each job by its number and full overrides; the figure by a short label
(``experiments/report/labels.py``). Jobs that differ only by ``seed=`` are one configuration:
``comparison_seeds.{csv,md}`` gives the mean and standard deviation over seeds per
configuration, and every panel of the figure shows configurations (mean ± std) instead of jobs.
An Optuna search also gets its best trial named and its own figures
(``experiments/report/search.py``).
Columns are the summary fields the jobs wrote, so a new field shows up without a change here.
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from experiments.report.figure import PANELS, save_comparison
from experiments.report.jobs import (
    Job,
    Row,
    configuration_name,
    configuration_rows,
    has_seed_groups,
    load_jobs,
    numeric_fields,
    rows_of,
)
from experiments.report.search import describe_best, search_of, write_search_figures

log = logging.getLogger(__name__)

EXIT_FAILED = 1
LEADING = ("sync", "strategy", "status")  # the table's first columns after the job's name
CHECKS = ("weights_match",)  # its last ones


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
    seed only; an Optuna search's ``search_*.png``) for the jobs in ``sweep_dir``, print the
    tables and the best trial; return the jobs."""
    jobs = load_jobs(sweep_dir)
    if not jobs:
        log.warning("no job in %s wrote a summary: nothing to compare", sweep_dir)
        return jobs
    fields = numeric_fields(jobs)
    shown = shown_fields(fields)
    table = markdown_table([job_row(job, shown) for job in jobs])
    (sweep_dir / "comparison.md").write_text(table)
    write_csv(sweep_dir / "comparison.csv", [job_row(job, scalar_fields(jobs)) for job in jobs])
    print(f"\nComparison of {len(jobs)} jobs ({sweep_dir}/comparison.{{csv,md,png}}):\n")
    print(table)
    if has_seed_groups(jobs):
        groups = configuration_rows(jobs)
        seed_table = markdown_table([seed_display(row, shown) for row in groups])
        (sweep_dir / "comparison_seeds.md").write_text(seed_table)
        write_csv(sweep_dir / "comparison_seeds.csv", [seed_row(row, fields) for row in groups])
        print(f"Mean ± standard deviation over seeds ({sweep_dir}/comparison_seeds.{{csv,md}}):\n")
        print(seed_table)
    rows = rows_of(jobs)
    search = search_of(sweep_dir)
    if search is not None:
        best = search.best_job(jobs)
        for row in rows:
            if best in row.jobs:
                row.label += " (best)"
        print(describe_best(search, jobs))
        for line in write_search_figures(sweep_dir, search, jobs):
            print(line)
    save_comparison(sweep_dir / "comparison.png", rows, fields, figure_title(jobs, rows))
    return jobs


def shown_fields(fields: list[str]) -> list[str]:
    """The numeric fields the printed tables show: those the figure's panels show, in order."""
    return [field for panel in PANELS for field in panel.fields(fields)]


def scalar_fields(jobs: list[Job]) -> list[str]:
    """Every summary field holding a scalar in some job (the CSV's columns), in summary order."""
    found: dict[str, None] = {}
    for job in jobs:
        found |= {key: None for key, value in job.summary.items() if not isinstance(value, dict)}
    return [key for key in found if key not in LEADING]


def job_row(job: Job, fields: list[str]) -> dict[str, Any]:
    """A job's line: number, full overrides, the leading columns, then ``fields``."""
    row = {"job": job.number, "overrides": job.name}
    columns = [*LEADING, *fields, *(c for c in CHECKS if c not in fields)]
    return row | {column: job.summary.get(column) for column in columns}


def seed_row(row: Row, fields: list[str]) -> dict[str, Any]:
    """One configuration: its seeds' count, how many completed, mean and spread per field."""
    line: dict[str, Any] = {
        "configuration": configuration_name(row),
        "seeds": len(row.jobs),
        "completed": len(row.jobs) - len(row.failures),
    }
    for field in fields:
        line[f"{field}_mean"], line[f"{field}_std"] = row.mean_std(field)
    return line


def seed_display(row: Row, fields: list[str]) -> dict[str, Any]:
    """A configuration's Markdown line: ``mean ± std`` in one cell per field."""
    line = {key: value for key, value in seed_row(row, []).items()}
    for field in fields:
        mean, std = row.mean_std(field)
        line[field] = (
            None if mean is None else _cell(mean) + ("" if std is None else f" ± {_cell(std)}")
        )
    return line


def figure_title(jobs: list[Job], rows: list[Row]) -> str:
    if len(rows) < len(jobs):
        return f"Sweep of {len(jobs)} jobs: {len(rows)} configurations, each over its seeds"
    return f"Sweep of {len(jobs)} jobs"


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
