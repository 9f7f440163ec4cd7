"""The comparison figure: return curves on top, one bar panel per summary measure below.

Every curve, bar and legend entry carries its row's label (``#3 lr=0.000192 sync_every=2``, or a
configuration and its seed count), and rows stand for jobs or for configurations (mean ± std
over seeds) alike, in every panel. The layout grows with the rows: the bars are horizontal, one
line per row with the labels once at the left, so 2 or 50 rows stay legible; with more than
:data:`CURVE_LIMIT` rows the curves show the best :data:`BEST_CURVES` by final return and the
title says so. A panel shows every numeric summary field its prefix selects, so a new field
(``staleness_p95``) appears in its panel without a change here.

matplotlib is imported where a figure is drawn, not with this module: Hydra builds the sweep
callback that imports it in every ``run.py`` process, and a single run draws nothing (the import
is a second of its start-up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from experiments.report.jobs import Row

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CURVE_LIMIT = 12
BEST_CURVES = 8
RANK_FIELD = "final_return"
WIDTH_IN = 16.0
CURVES_IN = 4.5
ROW_IN = 0.3  # bar panel height per row


@dataclass(frozen=True)
class Panel:
    """A bar panel: every numeric summary field starting with ``prefix``, one bar per row."""

    title: str
    prefix: str
    scale: float = 1.0

    def fields(self, available: list[str]) -> list[str]:
        return [field for field in available if field.startswith(self.prefix)]

    def bar_label(self, field: str) -> str:
        """``sync_latency_p95_ms`` -> ``p95``: what tells the panel's bars apart."""
        return field[len(self.prefix) :].strip("_").removesuffix("_ms") or field


PANELS = (
    Panel("final return", "final_return"),
    Panel("frames per second", "frames_per_s"),
    Panel("trainer blocked per sync (ms)", "sync_latency_"),
    Panel("staleness (updates behind)", "staleness_"),
    Panel("rollouts dropped (too stale)", "rollouts_dropped"),
    Panel("importance ratio pi/mu", "importance_ratio_"),
    Panel("weights moved (MB)", "bytes_moved", 1e-6),
)


def comparison_figure(rows: list[Row], fields: list[str], title: str) -> Figure:
    """The figure for ``rows``; ``fields``: the numeric summary fields present in the sweep.

    Curves and bars are two subfigures, each laid out on its own: the curves' legend takes
    width from the curves only, the row labels from the bars only."""
    from matplotlib.figure import Figure

    panels = [(panel, panel.fields(fields)) for panel in PANELS if panel.fields(fields)]
    bars_in = max(2.4, ROW_IN * len(rows) + 1.2)
    figure = Figure(figsize=(WIDTH_IN, CURVES_IN + bars_in + 0.4), layout="constrained")
    figure.suptitle(title)
    top, bottom = figure.subfigures(2, 1, height_ratios=(CURVES_IN, bars_in))
    _plot_curves(top.add_subplot(), rows)
    first = None
    for column, (panel, panel_fields) in enumerate(panels):
        axes = bottom.add_subplot(1, len(panels), column + 1, sharey=first)
        _plot_bars(axes, panel, panel_fields, rows, labelled=first is None)
        first = first or axes
    return figure


def save_comparison(path: Path, rows: list[Row], fields: list[str], title: str) -> None:
    comparison_figure(rows, fields, title).savefig(path, dpi=100)


def curve_rows(rows: list[Row]) -> tuple[list[Row], str]:
    """The rows whose curves are drawn, and what the title says of the choice."""
    drawn = [row for row in rows if row.curve()[0]]
    if len(drawn) <= CURVE_LIMIT:
        return drawn, ""
    ranked = sorted(drawn, key=lambda row: -(row.mean_std(RANK_FIELD)[0] or -math.inf))
    chosen = {id(row) for row in ranked[:BEST_CURVES]}
    note = f", best {BEST_CURVES} of {len(drawn)} by {RANK_FIELD.replace('_', ' ')}"
    return [row for row in drawn if id(row) in chosen], note


def _plot_curves(axes: Any, rows: list[Row]) -> None:
    drawn, note = curve_rows(rows)
    colours = figure_colours(len(drawn))
    for row, colour in zip(drawn, colours, strict=True):
        frames, means, stds = row.curve()
        axes.plot(frames, means, label=row.label, color=colour, linewidth=1.4)
        if len(row.jobs) > 1:
            low = [m - s for m, s in zip(means, stds, strict=True)]
            high = [m + s for m, s in zip(means, stds, strict=True)]
            axes.fill_between(frames, low, high, color=colour, alpha=0.2, linewidth=0)
    grouped = any(len(row.jobs) > 1 for row in rows)
    axes.set_title(
        "Worker episode return, "
        + ("mean over seeds ± one standard deviation" if grouped else "per job")
        + note
    )
    axes.set_xlabel("frames collected by the workers")
    axes.set_ylabel("episode return")
    axes.grid(alpha=0.3)
    if drawn:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def figure_colours(count: int) -> list[Any]:
    """``count`` distinct colours (tab10, or tab20 for more than 10)."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def _plot_bars(axes: Any, panel: Panel, fields: list[str], rows: list[Row], labelled: bool) -> None:
    height = 0.8 / len(fields)
    for index, field in enumerate(fields):
        offset = -0.4 + height * (index + 0.5)
        found = [(y, *row.mean_std(field)) for y, row in enumerate(rows)]
        found = [(y, mean, std) for y, mean, std in found if mean is not None]
        spread = [std for _, _, std in found if std is not None]
        axes.barh(
            [y + offset for y, _, _ in found],
            [mean * panel.scale for _, mean, _ in found],
            height,
            xerr=[(std or 0.0) * panel.scale for _, _, std in found] if spread else None,
            label=panel.bar_label(field),
            color=f"C{index}",
            error_kw={"elinewidth": 1.0, "capsize": 2.0},
        )
    axes.set_title(panel.title, fontsize="medium")
    axes.set_yticks(range(len(rows)), [row.label for row in rows], fontsize="small")
    axes.tick_params(axis="y", labelleft=labelled, length=0 if not labelled else 3.5)
    axes.set_ylim(len(rows) - 0.5, -0.5)  # the first job at the top
    axes.grid(axis="x", alpha=0.3)
    if len(fields) > 1:  # below the axis, clear of the bars, a fixed distance under the ticks
        from matplotlib.transforms import offset_copy

        below = offset_copy(axes.transAxes, fig=axes.figure, y=-0.25, units="inches")
        axes.legend(
            fontsize="small", loc="upper center", bbox_to_anchor=(0.5, 0.0),
            bbox_transform=below, ncols=len(fields), frameon=False,
        )  # fmt: skip
