"""The sweep report's figures: an in-memory Optuna study rebuilt from a `SweepRecord` (the MLflow runs
alone), drawn by Optuna's matplotlib visualisations.

Each figure first checks that its inputs can say something (enough complete trials, a swept key that
varies); when they cannot, its status carries the reason and no file is written. A figure counts as drawn
only when its PNG exists and is not empty, exactly as for the plots of a run's report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .plots import STATUS_FILE, PlotStatus
from .plots.common import DPI, style

log = logging.getLogger(__name__)

# (name, file under figures/, title in the report)
FIGURES = (
    ("optimization_history", "optimization_history.png", "Optimisation history"),
    ("param_importances", "param_importances.png", "Parameter importances"),
    ("parallel_coordinate", "parallel_coordinate.png", "Parallel coordinates"),
    ("slice", "slice.png", "Slice plot"),
)


@contextlib.contextmanager
def quiet_optuna():
    """Optuna's ExperimentalWarning (its matplotlib plots are marked experimental) and its log lines off,
    its verbosity restored afterwards."""
    import optuna
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="optuna")
            yield optuna
    finally:
        optuna.logging.set_verbosity(previous)


def distribution(dim):
    """Optuna's distribution for one SpaceDim."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    if dim.type == "float":
        return FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    if dim.type == "int":
        return IntDistribution(int(dim.low), int(dim.high), log=dim.log, step=int(dim.step or 1))
    return CategoricalDistribution(dim.choices)


def _frozen(trial, dists: dict):
    """One record trial as Optuna's FrozenTrial; ValueError when its values do not fit the space."""
    from optuna.trial import TrialState, create_trial
    params = {k: v for k, v in trial.params.items() if k in dists}
    value = trial.value if trial.state in ("COMPLETE", "PRUNED") else None
    steps = {int(e): float(v) for e, v in trial.intermediate_values.items() if math.isfinite(v)}
    return create_trial(state=TrialState[trial.state], value=value, params=params,
                        distributions={k: dists[k] for k in params}, intermediate_values=steps,
                        user_attrs={"mlflow.run_id": trial.run_id})


def rebuild_study(record) -> tuple[object, list[str]]:
    """An in-memory study holding the record's trials under their own numbers → (study, notes).

    Numbers without a run (a trial that failed before its run started, or one not yet begun) are filled
    with FAIL trials, so the history's x-axis shows the sweep's trial numbers. A trial whose logged values
    fit no distribution of the space is left out (as FAIL), and named in the notes."""
    with quiet_optuna() as optuna:
        from optuna.trial import TrialState, create_trial
        study = optuna.create_study(study_name=record.tag("study") or record.run_name,
                                    direction=record.direction if record.direction == "maximize" else "minimize")
        dists = {k: distribution(d) for k, d in record.space.items()}
        by_number = {}
        for trial in record.trials:
            by_number.setdefault(trial.number, trial)
        notes = []
        for number in range(max(by_number, default=-1) + 1):
            trial = by_number.get(number)
            frozen = None
            if trial is not None:
                try:
                    frozen = _frozen(trial, dists)
                except ValueError as exc:
                    notes.append(f"trial {number} is left out of the figures: {exc}")
            study.add_trial(frozen or create_trial(state=TrialState.FAIL))
    return study, notes


# ---------------------------------------------------------------------------------------- checks

def _complete(record) -> list:
    return [t for t in record.trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]


def _varying(trials, keys) -> list[str]:
    """The swept keys whose value differs between the given trials."""
    return [k for k in keys if len({json.dumps(t.params.get(k), default=str) for t in trials}) > 1]


def why_not(name: str, record) -> str | None:
    """Why a figure cannot say anything for this sweep (None: it can be drawn)."""
    done = _complete(record)
    n = len(done)
    if name == "optimization_history":
        return None if n >= 2 else f"needs at least 2 complete trials ({n} complete)"
    if not record.space:
        return f"the swept keys are unknown: {record.space_problem or 'the space is empty'}"
    if name == "param_importances":
        if n < 2:
            return f"needs at least 2 complete trials ({n} complete)"
        if not _varying(done, record.space):
            return "every complete trial has the same values of the swept keys"
        if len({t.value for t in done}) < 2:
            return "every complete trial has the same value, so no key explains any of its variation"
        return None
    if name == "parallel_coordinate":
        return None if n >= 2 else f"needs at least 2 complete trials ({n} complete)"
    return None if n >= 1 else "needs at least 1 complete trial (none completed)"


# ------------------------------------------------------------------------------------------ draw

def _drawer(name: str, metric: str) -> Callable:
    from optuna.importance import FanovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm
    target = metric or "objective"
    return {
        "optimization_history": lambda s: ovm.plot_optimization_history(s, target_name=target),
        "param_importances": lambda s: ovm.plot_param_importances(
            s, evaluator=FanovaImportanceEvaluator(seed=0), target_name=target),
        "parallel_coordinate": lambda s: ovm.plot_parallel_coordinate(s, target_name=target),
        "slice": lambda s: ovm.plot_slice(s, target_name=target),
    }[name]


def _figure_of(axes):
    import numpy as np
    first = np.ravel(np.asarray(axes, dtype=object))[0] if not hasattr(axes, "figure") else axes
    return first.figure


def _draw_one(name: str, study, metric: str, path: Path) -> None:
    """Draw one Optuna figure into ``path`` (pyplot figures made by Optuna are closed again). Inside the
    report's style context (Agg backend, nothing global changed) Optuna's own grey ggplot look is used for
    all four: its colour scales fade to white, which vanishes on the report's white axes."""
    with quiet_optuna(), style():  # style() selects the Agg backend before pyplot is imported
        from matplotlib import pyplot as plt
        plt.style.use(["ggplot", {"axes.titley": None}])  # matplotlib places titles: no render() check here
        fig = _figure_of(_drawer(name, metric)(study))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=DPI, format="png", bbox_inches="tight")
        finally:
            plt.close(fig)


def _status(name: str, file: str, record, study, fig_dir: Path) -> PlotStatus:
    path = fig_dir / file
    path.unlink(missing_ok=True)
    reason = why_not(name, record)
    if reason:
        return PlotStatus("skipped", reason)
    try:
        _draw_one(name, study, record.metric, path)
    except Exception as exc:  # one failing figure never costs the report
        log.debug("sweep figure %s failed", name, exc_info=True)
        message = " ".join(str(exc).split())
        return PlotStatus("failed", f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    if not path.is_file() or path.stat().st_size == 0:
        return PlotStatus("failed", "no file written")
    return PlotStatus("success", None, [file])


def sweep_plots(record, fig_dir: Path) -> tuple[dict[str, PlotStatus], list[str]]:
    """Every sweep figure into ``fig_dir`` with `status.json` → (statuses, notes on left-out trials)."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):
        stale.unlink()
    study, notes = rebuild_study(record)
    statuses = {name: _status(name, file, record, study, fig_dir) for name, file, _ in FIGURES}
    (fig_dir / STATUS_FILE).write_text(
        json.dumps({name: asdict(status) for name, status in statuses.items()}, indent=2) + "\n")
    return statuses, notes
