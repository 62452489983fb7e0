"""`mixvae sweep CONFIG --space SPACE.yaml --trials N`: the command line of a hyperparameter sweep
(mixvae/sweep/ does the work). Everything is checked before the first trial: the config as `validate` checks
it, the space against the config, the metric and its direction; every problem is listed, exit 2."""

from __future__ import annotations

import os
import sys

import click

from mixvae.cli.common import EXIT_RUNTIME, EXIT_USAGE, State, _fail, _out, refuse_in_job
from mixvae.paths import shown


def _blank(ctx, param, value):
    """`mlflow run -P name=` passes an empty string for "not given"."""
    return None if value in ("", None) else value


def _count(ctx, param, value):
    """--trials from `mlflow run` arrives as "20" or "20.0"."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a number of trials") from None
    if number < 1 or number != int(number):
        raise click.BadParameter(f"{value!r}: a whole number of trials, at least 1")
    return int(number)


def _seconds(ctx, param, value):
    if value in ("", None):
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise click.BadParameter(f"{value!r}: the timeout must be positive")
    return seconds


def _metric_problems(cfg, metric: str, direction: str | None) -> list[str]:
    from mixvae.config import metric_table as mt
    val_keys = [f"val/{k}" for k in mt.enabled(cfg, mt.VAL)]
    if metric not in val_keys:
        return [f"--metric {metric}: not a per-epoch validation key of this configuration; "
                f"choose one of {', '.join(val_keys)}"]
    if direction is None and mt.direction(metric) == "none":
        return [f"--metric {metric} has no declared direction; add --direction min or max"]
    return []


def _direction(metric: str, given: str | None) -> str:
    from mixvae.config import metric_table as mt
    word = given or mt.direction(metric)
    return {"min": "minimize", "max": "maximize"}[word]


@click.command()
@click.argument("config")
@click.option("--space", "space_path", required=True, type=click.Path(dir_okay=False),
              help="SPACE.yaml: dotted config keys and their distributions.")
@click.option("--trials", default="20", show_default=True, callback=_count,
              help="Trials in the study, all workers together.")
@click.option("--timeout", default=None, callback=_seconds,
              help="Seconds after which this worker starts no new trial.")
@click.option("--metric", default=None, callback=_blank, help="Per-epoch validation key to optimise (default: training.monitor).")
@click.option("--direction", default=None, type=click.Choice(["min", "max", ""]), callback=_blank,
              help="Default: the metric's declared direction.")
@click.option("--storage", default=None, callback=_blank,
              help="Optuna storage to share the study: a journal file path, or sqlite:///, postgresql://, mysql:// "
                   "(default: in memory, this process only).")
@click.option("--study", "study_name", default=None, help="Study name (default: from the config, space and metric).")
@click.option("--pruner", default="median", show_default=True, type=click.Choice(["median", "none"]))
@click.option("--startup-trials", default=5, show_default=True, type=click.IntRange(min=0),
              help="Trials that finish before the pruner stops any.")
@click.option("--warmup-epochs", default=5, show_default=True, type=click.IntRange(min=0),
              help="Epochs of each trial before the pruner may stop it.")
@click.option("--sampler-seed", default=None, type=click.IntRange(min=0),
              help="Seed of Optuna's TPE sampler (default: training.seed).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one leaf key for every trial.")
@click.option("--overrides", default="", help="Several overrides separated by ';'.")
@click.option("--experiment-name", default=None)
@click.option("--no-trial-reports", is_flag=True, help="Trials build no REPORT.md of their own.")
@click.pass_obj
def sweep(state: State, config, space_path, trials, timeout, metric, direction, storage, study_name, pruner,
          startup_trials, warmup_epochs, sampler_seed, sets, overrides, experiment_name, no_trial_reports):
    """Search hyperparameters with Optuna: one MLflow parent run, one complete child run per trial."""
    from mixvae.cli import _gather_overrides, _validate
    from mixvae.config import ConfigError
    from mixvae.sweep import driver, space as space_lib
    from mixvae.sweep.study import StudySettings
    from mixvae.sweep.trial import Sweep
    from mixvae.tracking_uri import check_uri, resolve_tracking_uri

    refuse_in_job(state, "a sweep")
    shortcuts = {"tracking.experiment_name": experiment_name} if experiment_name else {}
    if no_trial_reports:
        shortcuts["tracking.report"] = False
    items = _gather_overrides(sets, overrides or None)
    loaded, _, _, _ = _validate(state, config, items, False, shortcuts)
    metric = metric or loaded.config.training.monitor
    problems = _metric_problems(loaded.config, metric, direction)
    try:
        space = space_lib.load_space(space_path, config, items, state.tracking_uri)
    except ConfigError as exc:
        problems = exc.problems + problems
    if problems:
        _fail(state, ConfigError(problems, f"sweep {space_path}").render(), EXIT_USAGE)
    weights = [k for k in space if k.endswith("_weight")]
    if metric.startswith("val/loss.") and metric != "val/loss.recon" and weights:
        state.console.print(f"warning: {metric} contains the weighted terms this sweep varies ({', '.join(weights)}), "
                            "so trials are judged on different objectives; val/loss.recon or a clustering "
                            "metric compares them fairly")
    uri = resolve_tracking_uri(state.tracking_uri, loaded.config.tracking.uri)[0]
    if problem := check_uri(uri):
        _fail(state, problem, EXIT_USAGE)
    settings = StudySettings(name=study_name or driver.default_study_name(loaded, space, metric), storage=storage,
                             direction=_direction(metric, direction), pruner=pruner, startup_trials=startup_trials,
                             warmup_epochs=warmup_epochs,
                             seed=loaded.config.training.seed if sampler_seed is None else sampler_seed)
    work = Sweep(config=config, items=items, shortcuts=shortcuts, space=space, metric=metric,
                 direction=settings.direction, pruner=pruner, uri=uri, parent_id="", name=driver.parent_name(loaded),
                 console=state.console, cli_uri=state.tracking_uri, verbose=state.verbose,
                 report_dir=loaded.config.tracking.report_dir)
    state.console.print(f"sweep {settings.name} · {trials} trials · {settings.direction} {metric} · "
                        f"storage {driver.redacted(storage)} · pruner {pruner}")
    attach = os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run -e sweep`: that run is the parent
    _run(state, work, loaded, settings, trials, timeout, attach, bool(experiment_name))


def _run(state: State, work, loaded, settings, trials: int, timeout, attach, experiment_from_cli: bool) -> None:
    from mixvae.sweep import driver
    from mixvae.sweep.study import StudyError
    from mixvae.tracking.writer import TrackingError
    try:
        result = driver.run_sweep(work, loaded, settings, trials, timeout, attach=attach,
                                  experiment_from_cli=experiment_from_cli)
    except StudyError as exc:
        _fail(state, str(exc), EXIT_USAGE)
    except TrackingError as exc:
        _fail(state, str(exc), EXIT_RUNTIME)
    _out(f"sweep_run_id={result.parent_id}")
    _out(f"study={result.study}")
    for run_id in result.trial_runs:
        _out(f"run_id={run_id}")
    c = result.counts
    state.console.print(f"sweep: {c.get('complete', 0)} complete · {c.get('pruned', 0)} pruned · "
                        f"{c.get('failed', 0)} failed · {c.get('running', 0)} still running elsewhere")
    if result.best:
        _out(f"best_trial={result.best['number']}")
        _out(f"best_value={result.best['value']!r}")
        state.console.print(f"best        trial {result.best['number']}: {work.metric} {result.best['value']:.4g} · "
                            + "  ".join(f"{k}={v}" for k, v in result.best["params"].items()))
    if result.best_config:
        _out(f"best_config={shown(result.best_config)}")
    if result.report:
        _out(f"report={shown(result.report)}")
        state.console.print(f"report      {shown(result.report)}")
    sys.exit(result.exit_code)
