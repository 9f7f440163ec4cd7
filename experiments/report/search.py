"""A tuning run's own report: its best trial, and the search's figures drawn by Optuna.

An Optuna sweep (``hparams_search=ppo_optuna``) is recognised by the sweeper each job's
``.hydra/hydra.yaml`` records. Its best trial comes from the sweeper's
``optimization_results.yaml`` and is matched to the job that ran it.

The figures come from a study rebuilt from the jobs (the sweeper's study lives in memory, and
Optuna 2's database storage does not run on SQLAlchemy 2): one trial per job, with the parameters
it drew from ``hydra.sweeper.params`` as the sweeper's own parser reads them. Optuna's own
matplotlib plots draw the objective per trial with the best-so-far line and a slice per
parameter that took more than one value. The parameter importances (from 2 completed trials on)
are Optuna's numbers drawn here: the sweeper pins Optuna 2, whose importance plot calls a
colormap function matplotlib 3.9 removed and whose default fANOVA evaluator fails under NumPy 2,
so they come from its mean-decrease-impurity evaluator (a scikit-learn random forest).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from experiments.report.jobs import Job

OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper"
RESULTS_FILE = "optimization_results.yaml"
HISTORY_FILE = "search_history.png"
IMPORTANCES_FILE = "search_importances.png"
SLICE_FILE = "search_slice.png"


@dataclass(frozen=True)
class Search:
    """What the sweep's Optuna sweeper was given: its search space (``hydra.sweeper.params``),
    direction(s) and the summary field it optimised; once it ended, its results file."""

    params: dict[str, str]
    direction: str | list[str]
    objective: str
    results: dict[str, Any] | None

    def best_job(self, jobs: list[Job]) -> Job | None:
        """The job that ran the best trial (None for a multi-objective or unfinished search)."""
        best = (self.results or {}).get("best_params")
        if best is None:
            return None
        for job in jobs:
            given = dict(o.split("=", 1) for o in job.overrides if "=" in o)
            if all(key in given and _same(given[key], value) for key, value in best.items()):
                return job
        return None


def search_of(sweep_dir: Path) -> Search | None:
    """The Optuna search that ran the sweep in ``sweep_dir``, or None if another sweeper did."""
    recorded = sorted(sweep_dir.glob("*/.hydra/hydra.yaml"))
    if not recorded:
        return None
    hydra_cfg = OmegaConf.load(recorded[0])
    sweeper = hydra_cfg.hydra.sweeper
    if not str(sweeper.get("_target_", "")).startswith(OPTUNA_SWEEPER):
        return None
    job_cfg = OmegaConf.load(recorded[0].parent / "config.yaml")
    results_path = sweep_dir / RESULTS_FILE
    results = yaml.safe_load(results_path.read_text()) if results_path.exists() else None
    direction = (
        OmegaConf.to_container(sweeper.direction)
        if OmegaConf.is_list(sweeper.direction)
        else str(sweeper.direction)
    )
    return Search(
        params={str(key): str(value) for key, value in (sweeper.get("params") or {}).items()},
        direction=direction,
        objective=str(job_cfg.get("objective", "objective")),
        results=results,
    )


def describe_best(search: Search, jobs: list[Job]) -> str:
    """The printed line naming the best trial: its job, objective value and parameters."""
    job = search.best_job(jobs)
    if job is None:
        return "No best trial to name (no trial completed, or several objectives)."
    params = " ".join(f"{key}={value}" for key, value in search.results["best_params"].items())
    return (
        f"Best trial: job #{job.number}, {search.objective} = {search.results['best_value']:.4g}"
        f" with {params}"
    )


def write_search_figures(sweep_dir: Path, search: Search, jobs: list[Job]) -> list[str]:
    """Draw the search's figures into ``sweep_dir``; return a line per figure drawn or skipped."""
    if not isinstance(search.direction, str):
        return ["No search figures: the search has several objectives."]
    # Optuna is an optional extra (sweeps): imported only once an Optuna sweep ran, so it is there.
    import matplotlib  # where a figure is drawn, as in experiments/report/figure.py
    import optuna
    from matplotlib import pyplot  # Optuna draws on pyplot's figures

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory"
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():  # Optuna sets pyplot's style
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = rebuilt_study(search, jobs)
            plots, notes = search_plots(study, search.objective)
            for file_name, draw in plots.items():
                figure = _figure_of(draw())
                figure.savefig(sweep_dir / file_name, dpi=100, bbox_inches="tight")
                pyplot.close(figure)
    finally:
        optuna.logging.set_verbosity(verbosity)
    if not plots:
        return notes
    return [f"Search figures (Optuna, {len(study.trials)} trials): {', '.join(plots)}", *notes]


def search_plots(study: Any, objective: str) -> tuple[dict[str, Any], list[str]]:
    """What to draw of ``study`` (file name -> a call that draws it), and why anything is not."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plots

    completed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not completed:
        return {}, ["No search figures: no trial completed."]
    plots = {HISTORY_FILE: lambda: history_figure(study, objective)}
    notes = []
    if len(completed) < 2:
        notes.append(f"{IMPORTANCES_FILE} not drawn: importances need 2 completed trials.")
    elif importlib.util.find_spec("sklearn") is None:
        notes.append(f"{IMPORTANCES_FILE} not drawn: Optuna's importances need scikit-learn.")
    else:
        evaluator = optuna.importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)
        plots[IMPORTANCES_FILE] = lambda: importances_figure(
            optuna.importance.get_param_importances(study, evaluator=evaluator), objective
        )
    varied = sorted({key for t in completed for key in t.params if _varies(completed, key)})
    if varied:  # a parameter with one value has nothing to show (and an empty axis to warn of)
        plots[SLICE_FILE] = lambda: optuna_plots.plot_slice(study, varied, target_name=objective)
    else:
        notes.append(f"{SLICE_FILE} not drawn: no parameter took two values.")
    return plots, notes


def rebuilt_study(search: Search, jobs: list[Job]) -> Any:
    """An in-memory Optuna study holding one trial per job, in job order: the parameters the job
    drew (its overrides, typed by Hydra's parser), its objective, failed if the job failed."""
    import optuna
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

    distributions, _ = create_params_from_overrides(
        [f"{key}={value}" for key, value in search.params.items()]
    )
    parser = OverridesParser.create()
    study = optuna.create_study(direction=search.direction)
    for job in jobs:
        drawn = {o.key_or_group: o.value() for o in parser.parse_overrides(job.overrides)}
        params = {key: drawn[key] for key in distributions if key in drawn}
        value = job.summary.get(search.objective)
        completed = not job.failed and isinstance(value, (int, float)) and not math.isnan(value)
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.COMPLETE
                if completed
                else optuna.trial.TrialState.FAIL,
                value=float(value) if completed else None,
                params=params,
                distributions={key: distributions[key] for key in params},
            )
        )
    return study


def history_figure(study: Any, objective: str) -> Any:
    """Optuna's optimisation history, its trials numbered as the sweep's jobs are."""
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization import matplotlib as optuna_plots

    axes = optuna_plots.plot_optimization_history(study, target_name=objective)
    axes.set_title(f"Optimisation history: {objective} per trial, best so far")
    axes.set_xlabel("trial (= job number)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    return axes


def importances_figure(importances: dict[str, float], objective: str) -> Any:
    """Optuna's parameter importances as horizontal bars, the most important on top."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 1.4 + 0.4 * len(importances)), layout="constrained")
    axes = figure.add_subplot()
    names = list(importances)
    axes.barh(names, [importances[n] for n in names], color="C0")
    axes.set_ylim(len(names) - 0.5, -0.5)
    axes.set_xlabel(f"importance for {objective} (Optuna, mean decrease in impurity)")
    axes.set_title("Hyperparameter importances")
    axes.grid(axis="x", alpha=0.3)
    return figure


def _varies(trials: list[Any], key: str) -> bool:
    return len({repr(t.params.get(key)) for t in trials}) > 1


def _figure_of(axes: Any) -> Any:
    """The figure of what an Optuna plot returns: one Axes or an array of them."""
    from matplotlib.figure import Figure

    if isinstance(axes, Figure):
        return axes
    first = axes.flat[0] if hasattr(axes, "flat") else axes
    return first.figure


def _same(given: str, value: Any) -> bool:
    """Whether an override's value is the results file's value (floats compared as numbers)."""
    if isinstance(value, float):
        try:
            return math.isclose(float(given), value, rel_tol=1e-12)
        except ValueError:
            return False
    return given == str(value)
