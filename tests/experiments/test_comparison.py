"""The sweep comparison on hand-made job directories, checked for what a reader gets: one row per
job, in job order, failed jobs included; labels a person can read; a figure that lays out for 2
to 30 jobs without a matplotlib warning, every label inside it; seed groups aggregated in every
panel; an Optuna search's best trial named and its figures drawn."""

from __future__ import annotations

import csv
import itertools
import json
import warnings
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

from experiments.comparison import compare, markdown_table
from experiments.report.figure import BEST_CURVES, comparison_figure
from experiments.report.jobs import load_jobs, mean_curve, numeric_fields, rows_of
from experiments.report.labels import short_labels


def make_job(sweep: Path, name: str, overrides: list[str], summary: dict, returns: list) -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job / "summary.json").write_text(json.dumps(summary))
    lines = [
        json.dumps({"frames": 1000 * (i + 1), "episode_return": r}) for i, r in enumerate(returns)
    ]
    (job / "metrics.jsonl").write_text("".join(line + "\n" for line in lines))
    return job


def summary(sync: str, status: str = "completed", final_return: float | None = 20.0) -> dict:
    return {
        "sync": sync,
        "strategy": "tensordict",
        "status": status,
        "final_return": final_return,
        "frames_per_s": 12345.6,
        "sync_latency_p50_ms": 0.5,
        "sync_latency_p95_ms": 1.25,
        "staleness_mean": 1.0,
        "bytes_moved": 2048,
        "weights_match": sync != "none",
        "workers": {"0": {"version": 3}},  # nested: in neither table
    }


def tuning_sweep(sweep: Path, count: int) -> None:
    """``count`` jobs as the Optuna sweeper names them: 17-digit floats, shared overrides."""
    for number in range(count):
        lr, ent = 1.2345678901234567e-4 * (1 + number), 0.012442175420796637 / (1 + number)
        overrides = [
            f"learner.lr={lr}",
            f"learner.ent_coef={ent}",
            f"run.sync_every={(1, 2, 4)[number % 3]}",
            "hparams_search=ppo_optuna",
            "experiment=smoke",
        ]
        final = 20.0 + 7.0 * number % 13
        curve = [20.0 + final * step / 8 for step in range(8)]
        make_job(sweep, str(number), overrides, summary("pipe", final_return=final), curve)


def test_compare_writes_one_row_per_job_and_a_plot(tmp_path: Path, capsys) -> None:
    make_job(
        tmp_path, "10_sync=pipe", ["sync=pipe"], summary("pipe", final_return=480.0), [20, 400]
    )
    make_job(tmp_path, "2_sync=none", ["sync=none"], summary("none"), [20, None, 21])
    make_job(tmp_path, "3_sync=x", ["sync=shared-mem"], summary("shared-mem", "worker_failed"), [])
    (tmp_path / "multirun.yaml").write_text("{}\n")  # not a job

    jobs = compare(tmp_path)

    assert [job.name for job in jobs] == ["sync=none", "sync=shared-mem", "sync=pipe"]
    assert jobs[0].curve == [(1000, 20), (3000, 21)]  # iterations without an episode are skipped
    with (tmp_path / "comparison.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["job"], r["overrides"], r["status"], r["final_return"]) for r in rows] == [
        ("2", "sync=none", "completed", "20.0"),
        ("3", "sync=shared-mem", "worker_failed", "20.0"),
        ("10", "sync=pipe", "completed", "480.0"),
    ]
    assert "workers" not in rows[0]
    table = (tmp_path / "comparison.md").read_text()
    assert (
        "| 10 | sync=pipe | pipe | tensordict | completed | 480 | 12,346 | 0.5 | 1.25 | 1 | 2,048"
        " | True |" in table
    )
    assert table in capsys.readouterr().out
    assert (tmp_path / "comparison.png").read_bytes().startswith(b"\x89PNG")


def test_a_new_summary_field_joins_the_csv_and_its_panel(tmp_path: Path) -> None:
    """The report reads the fields the jobs wrote: a new staleness statistic needs no change."""
    for number, sync in enumerate(("none", "pipe")):
        make_job(
            tmp_path, str(number), [f"sync={sync}"],
            summary(sync) | {"staleness_p95": 2.0 + number}, [20],
        )  # fmt: skip
    compare(tmp_path)
    with (tmp_path / "comparison.csv").open() as file:
        assert [row["staleness_p95"] for row in csv.DictReader(file)] == ["2.0", "3.0"]
    assert "staleness_p95" in (tmp_path / "comparison.md").read_text().splitlines()[0]
    jobs = load_jobs(tmp_path)
    figure = comparison_figure(rows_of(jobs), numeric_fields(jobs), "t")
    staleness = next(a for a in figure.axes if a.get_title().startswith("staleness"))
    assert [t.get_text() for t in staleness.get_legend().get_texts()] == ["mean", "p95"]


def test_compare_without_jobs_writes_nothing(tmp_path: Path) -> None:
    assert compare(tmp_path) == []
    assert not (tmp_path / "comparison.csv").exists()


def test_markdown_cells() -> None:
    table = markdown_table([{"a": None, "b": 0.000123, "c": 1234567, "d": True}])
    assert table.splitlines()[2] == "| - | 0.000123 | 1,234,567 | True |"


def test_jobs_without_a_summary_are_listed_as_failed(tmp_path: Path) -> None:
    make_job(tmp_path, "0", ["sync=pipe"], summary("pipe"), [20])
    (tmp_path / "1" / ".hydra").mkdir(parents=True)  # a job that died before writing anything
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- sync=none\n")
    jobs = compare(tmp_path)
    assert [(job.name, job.summary["status"], job.failed) for job in jobs] == [
        ("sync=pipe", "completed", False),
        ("sync=none", "no_summary", True),
    ]
    assert [row.label for row in rows_of(jobs)] == ["#0 sync=pipe", "#1 sync=none (no_summary)"]


def test_labels_keep_what_differs_with_floats_to_three_digits() -> None:
    labels = short_labels(
        [
            ["learner.lr=0.00019182157424526137", "run.sync_every=2", "experiment=smoke"],
            ["learner.lr=0.0025272740097365023", "run.sync_every=4", "experiment=smoke"],
            ["learner.lr=1e-4", "sync.timeout=30", "experiment=smoke"],
        ]
    )
    assert labels == [
        "lr=0.000192 sync_every=2",
        "lr=0.00253 sync_every=4",
        "lr=0.0001 timeout=30",
    ]
    # a last part that two keys share keeps the whole key; one job keeps all its overrides
    assert short_labels([["a.timeout=1", "b.timeout=2.5"], ["a.timeout=3"]]) == [
        "a.timeout=1 b.timeout=2.5",
        "a.timeout=3",
    ]
    assert short_labels([["sync=pipe"]]) == ["sync=pipe"]


def draw(figure: Figure) -> object:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def drawn_texts(figure: Figure) -> list[Text]:
    """The texts a draw puts on the canvas: an axis keeps tick objects outside its view, unseen."""
    tick_labels, seen = set(), []
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                tick_labels |= {id(tick.label1), id(tick.label2)}
                if low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    seen += [tick.label1, tick.label2]
    texts = [t for t in figure.findobj(Text) if id(t) not in tick_labels] + seen
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def assert_labels_readable(figure: Figure) -> None:
    """Every text lies inside the figure, and the row labels do not overlap one another."""
    renderer = draw(figure)
    box = figure.bbox
    for text in drawn_texts(figure):
        extent = text.get_window_extent(renderer)
        assert (
            extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1
            and extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1
        ), f"{text.get_text()!r} at {extent} is outside the figure {box}"  # fmt: skip
    row_labels = [t for t in figure.axes[1].get_yticklabels() if t.get_text()]
    extents = sorted((t.get_window_extent(renderer) for t in row_labels), key=lambda e: e.y0)
    for lower, upper in itertools.pairwise(extents):
        assert lower.y1 <= upper.y0 + 0.5, "row labels overlap"
    titles = [a.title.get_window_extent(renderer) for a in figure.axes[1:]]
    for left, right in itertools.pairwise(sorted(titles, key=lambda e: e.x0)):
        assert left.x1 <= right.x0, "panel titles overlap"


@pytest.mark.parametrize("count", [2, 6, 30])
def test_the_figure_lays_out_for_2_to_30_jobs_with_long_overrides(
    tmp_path: Path, count: int
) -> None:
    tuning_sweep(tmp_path, count)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied ..." fails the test
        jobs = load_jobs(tmp_path)
        rows = rows_of(jobs)
        figure = comparison_figure(rows, numeric_fields(jobs), "t")
        assert_labels_readable(figure)
    labels = [t.get_text() for t in figure.axes[1].get_yticklabels()]
    assert labels[:2] == [
        "#0 lr=0.000123 ent_coef=0.0124 sync_every=1",
        "#1 lr=0.000247 ent_coef=0.00622 sync_every=2",
    ]
    curves = figure.axes[0]
    drawn = [line.get_label() for line in curves.get_lines()]
    if count <= 12:
        assert drawn == labels
    else:  # the best curves only, and the title says so
        best = sorted(rows, key=lambda row: -row.mean_std("final_return")[0])[:BEST_CURVES]
        assert set(drawn) == {row.label for row in best}
        assert f"best {BEST_CURVES} of {count} by final return" in curves.get_title()


def test_seed_groups_are_aggregated_in_every_panel(tmp_path: Path, capsys) -> None:
    finals = {("pipe", 0): 400.0, ("pipe", 1): 500.0, ("none", 0): 20.0, ("none", 1): 22.0}
    for number, ((sync, seed), final) in enumerate(finals.items()):
        make_job(
            tmp_path, str(number), [f"sync={sync}", f"seed={seed}"],
            summary(sync, final_return=final) | {"frames_per_s": 1000.0 * (1 + seed)},
            [final / 2, final],
        )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(tmp_path)
    with (tmp_path / "comparison_seeds.csv").open() as file:
        rows = {r["configuration"]: r for r in csv.DictReader(file)}
    assert set(rows) == {"sync=pipe", "sync=none"}
    assert (rows["sync=pipe"]["seeds"], rows["sync=pipe"]["completed"]) == ("2", "2")
    assert float(rows["sync=pipe"]["final_return_mean"]) == 450.0
    assert float(rows["sync=pipe"]["final_return_std"]) == pytest.approx(70.71, abs=0.01)
    table = (tmp_path / "comparison_seeds.md").read_text()
    assert "| sync=none | 2 | 2 | 21 ± 1.41 | 1,500 ± 707 |" in table
    assert table in capsys.readouterr().out

    jobs = load_jobs(tmp_path)
    figure = comparison_figure(rows_of(jobs), numeric_fields(jobs), "t")
    curves, *panels = figure.axes
    assert [line.get_label() for line in curves.get_lines()] == [
        "sync=pipe (2 seeds)",
        "sync=none (2 seeds)",
    ]
    assert len(curves.collections) == 2  # one ±std band per configuration
    assert [t.get_text() for t in panels[0].get_yticklabels()] == [
        "sync=pipe (2 seeds)",
        "sync=none (2 seeds)",
    ]
    for panel in panels:  # one bar per configuration and field, never one per seed
        fields = len(panel.get_legend().get_texts()) if panel.get_legend() else 1
        assert len(panel.patches) == 2 * fields, panel.get_title()
    returns = next(p for p in panels if p.get_title() == "final return")
    assert [bar.get_width() for bar in returns.patches] == [450.0, 21.0]
    speed = next(p for p in panels if p.get_title() == "frames per second")
    assert [bar.get_width() for bar in speed.patches] == [1500.0, 1500.0]
    assert len(speed.lines) + len(speed.collections) > 0  # the error bars of the spread


def test_a_sweep_without_seeds_writes_no_seed_table(tmp_path: Path) -> None:
    make_job(tmp_path, "0", ["sync=none"], summary("none"), [20])
    compare(tmp_path)
    assert not (tmp_path / "comparison_seeds.md").exists()


def test_mean_curve_averages_the_seeds_that_have_a_value() -> None:
    assert mean_curve([[(1, 10.0), (2, 20.0)], [(1, 30.0)]]) == ([1, 2], [20.0, 20.0], [10.0, 0.0])


OPTUNA_HYDRA_YAML = """\
hydra:
  sweeper:
    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper
    direction: maximize
    study_name: ppo
    storage: null
    params:
      learner.lr: tag(log, interval(1e-4, 3e-3))
      learner.ent_coef: interval(0.0, 0.02)
      run.sync_every: choice(1, 2, 4)
"""


def test_an_optuna_search_names_its_best_trial_and_draws_its_figures(
    tmp_path: Path, capsys
) -> None:
    pytest.importorskip("optuna")  # imported before warnings turn into errors
    tuning_sweep(tmp_path, 4)
    for job in sorted(tmp_path.iterdir()):
        (job / ".hydra" / "hydra.yaml").write_text(OPTUNA_HYDRA_YAML)
        (job / ".hydra" / "config.yaml").write_text("objective: final_return\n")
    best = load_jobs(tmp_path)[2]
    best_params = {o.split("=")[0]: o.split("=")[1] for o in best.overrides[:3]}
    (tmp_path / "optimization_results.yaml").write_text(
        "name: optuna\nbest_params:\n"
        + "".join(f"  {key}: {value}\n" for key, value in best_params.items())
        + f"best_value: {best.summary['final_return']}\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(tmp_path)
    out = capsys.readouterr().out
    assert f"Best trial: job #2, final_return = {best.summary['final_return']:.4g} with" in out
    assert best.overrides[0] in out  # the full value: what to rerun it with
    for name in ("search_history.png", "search_importances.png", "search_slice.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), name
    assert "Search figures (Optuna, 4 trials)" in out
