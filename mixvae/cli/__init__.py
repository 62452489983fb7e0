"""The `mixvae` command line: validate, train, sweep, report, compare, runs, sync.

Human-readable output goes to stderr; stdout carries only machine-readable `key=value` lines (and the
YAML of --print-config and the `runs` listing). Exit codes: 0 ok, 1 runtime failure, 2 usage or
configuration error, 130 interrupted.
"""

from __future__ import annotations

import atexit
import difflib
import os
import sys
import traceback
from pathlib import Path

# --- the process's exit ------------------------------------------------------------------------------
# A finished command still pays for the interpreter's finalisation: tearing down JAX's runtime, its
# compiled programs and every module took about 1.8 s after a dense training run on the 2-core CPU, with
# nothing left to save (docs/performance.md). The console entry (`run`) arms `_leave` with the command's
# exit code; registered when this module is first imported, before JAX, MLflow or logging register
# theirs, it runs after every other atexit handler (and after the non-daemon threads were joined), flushes
# the standard streams and leaves at once. Unarmed, as in tests and library use, it does nothing; with
# MIXVAE_EXIT_FINALIZE=1 (or under coverage, whose own atexit handler may have been registered first) the
# interpreter finalises as usual.
_exit_code: int | None = None


def _leave() -> None:
    if _exit_code is None or os.environ.get("MIXVAE_EXIT_FINALIZE") == "1" or "coverage" in sys.modules:
        return
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written anyway
            pass
    os._exit(_exit_code)


atexit.register(_leave)

import click  # noqa: E402

from mixvae import __version__
from mixvae.paths import shown
from mixvae.cli.common import (EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, State, _fail,  # noqa: F401
                               _out, refuse_in_job)
from mixvae.cli.sweep import sweep as sweep_command
from mixvae.tracking.sync import sync_command


def _versions() -> str:
    import importlib.metadata as md
    parts = []
    for pkg in ("jax", "flax", "optax", "mlflow"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            parts.append(f"{pkg} ?")
    return f"mixvae {__version__} ({', '.join(parts)})"


def _quiet_env() -> None:
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow")
    warnings.filterwarnings("ignore", message=".*SQLAlchemy.*")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's per-download progress bars would interleave with mixvae's own (a sweep downloads per trial)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class _Group(click.Group):
    def resolve_command(self, ctx, args):
        name = args[0] if args else None
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            match = difflib.get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f" Did you mean '{match[0]}'?" if match else ""
            ctx.fail(f"No such command '{name}'.{hint}")
        return super().resolve_command(ctx, args)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", message=_versions())
@click.option("--tracking-uri", default=None, help="Tracking URI for this command (beats MLFLOW_TRACKING_URI).")
@click.option("--workdir", default=None, type=click.Path(file_okay=False),
              help="Working directory for checkpoints, reports and the default local store "
                   "(default: $MIXVAE_WORKDIR, else the current directory).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.pass_context
def main(ctx, tracking_uri, workdir, verbose, quiet):
    """mixvae: responsibility-conditioned mixture VAEs, tracked in MLflow."""
    _quiet_env()
    if workdir:
        from mixvae import paths
        if problem := paths.unwritable(workdir):  # validate and train alike: exit 2 before anything runs
            ctx.fail(f"--workdir {workdir}: {problem}")
        Path(workdir).mkdir(parents=True, exist_ok=True)
        os.environ[paths.ENV_VAR] = str(Path(workdir).resolve())
    ctx.obj = State(tracking_uri, verbose, quiet)


# --- validate ----------------------------------------------------------------------------------------

def _gather_overrides(sets: tuple[str, ...], overrides: str | None) -> list[str]:
    from mixvae.config import split_overrides
    return list(sets) + split_overrides(overrides)


def _validate(state: State, config: str, overrides: list[str], strict: bool, shortcuts: dict | None = None):
    """The four validation stages (schema, rules, data, abstract train step).

    Returns (loaded, dataset, report) or exits 2."""
    from mixvae.config import ConfigError, architecture_code, load_config
    from mixvae.data import DataError, probe_dataset
    from mixvae.train.abstract import WiringError, check

    console = state.console
    mlflow_run = os.environ.get("MLFLOW_RUN_ID")
    try:
        loaded = load_config(config, overrides, shortcuts, tracking_uri=state.tracking_uri)
    except ConfigError as exc:
        console.error(exc.render())
        _validation_run(mlflow_run, config, None, exc.problems, [])
        sys.exit(EXIT_USAGE)
    cfg = loaded.config
    warnings = list(loaded.warnings)
    try:
        ds, data_warnings = probe_dataset(cfg)
    except DataError as exc:
        console.error(f"{loaded.path}: data problems\n" + "\n".join(f"  {p}" for p in exc.problems))
        _validation_run(mlflow_run, config, loaded, exc.problems, warnings)
        sys.exit(EXIT_USAGE)
    warnings += data_warnings
    report = None
    if ds is not None:
        try:
            report = check(cfg, ds.image_shape, ds.n_labeled, ds.n_train)
        except WiringError as exc:
            console.error(f"{loaded.path}: 1 problem\n  {exc}")
            _validation_run(mlflow_run, config, loaded, [str(exc)], warnings)
            sys.exit(EXIT_USAGE)
    if strict and warnings:
        console.error(f"{loaded.path}: {len(warnings)} warning(s) treated as errors (--strict)\n" +
                      "\n".join(f"  {w}" for w in warnings))
        _validation_run(mlflow_run, config, loaded, warnings, [])
        sys.exit(EXIT_USAGE)
    arch = architecture_code(cfg, ds.n_labeled if ds else None)
    console.print(f"OK  {loaded.path}  (architecture {arch})")
    if ds is not None:
        h, w, c = ds.image_shape
        console.print(f"  data      {ds.name} {h}x{w}x{c} · train {ds.n_train} · val {ds.n_val} · test {ds.n_test} "
                      f"· labeled {ds.n_labeled}")
    if report is not None:
        console.print(f"  model     {report.num_params:,} trainable parameters · abstract train step: loss.total "
                      f"{report.loss} · {report.num_terms} loss terms enabled")
    console.print(f"  warnings  {'none' if not warnings else warnings[0]}")
    for w_ in warnings[1:]:
        console.print(f"            {w_}")
    loaded.warnings = warnings
    _validation_run(mlflow_run, config, loaded, [], warnings)
    return loaded, ds, report, arch


def _validation_run(run_id, config, loaded, errors, warnings) -> None:
    """Under `mlflow run -e validate`: log config and validation.json to the entry point's run."""
    if not run_id:
        return
    from mixvae.tracking.entry_points import log_validation_run
    from mixvae.config import to_yaml
    log_validation_run(run_id, config_yaml=to_yaml(loaded.config) if loaded else None,
                       input_text=loaded.input_text if loaded else None,
                       validation={"valid": not errors, "errors": errors, "warnings": warnings})


@main.command()
@click.argument("config")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one leaf key (repeatable).")
@click.option("--overrides", default="", help="Several overrides separated by ';'.")
@click.option("--strict", is_flag=True, help="Warnings count as errors.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML on stdout.")
@click.pass_obj
def validate(state: State, config, sets, overrides, strict, print_config):
    """Check CONFIG without training and without contacting MLflow."""
    from mixvae.config import to_yaml
    loaded, ds, report, arch = _validate(state, config, _gather_overrides(sets, overrides), strict)
    _out("valid=true")
    _out(f"architecture={arch}")
    if print_config:
        _out(to_yaml(loaded.config).rstrip())


# --- train -------------------------------------------------------------------------------------------

def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(text)
    return seeds


@main.command()
@click.option("--config", "-c", "config", default=None, help="Config path or preset name.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override one leaf key (repeatable).")
@click.option("--overrides", default="", help="Several overrides separated by ';'.")
@click.option("--validate-only", is_flag=True, help="Run `mixvae validate` and stop.")
@click.option("--strict", is_flag=True, help="Warnings are errors.")
@click.option("--seeds", default=None, help="One run per seed: 0,1,2 or 0-4.")
@click.option("--resume", "resume", default=None, metavar="RUN_ID", help="Continue an interrupted or failed run.")
@click.option("--experiment-name", default=None)
@click.option("--run-name", default=None)
@click.option("--register-model", default=None, help="Registered model name ('' = do not register).")
@click.option("--alias", default=None, help="Alias of the new model version.")
@click.option("--no-report", is_flag=True, help="Do not build the report.")
@click.option("--force", is_flag=True,
              help="With --resume: resume a RUNNING run even when its process may still be training it.")
@click.pass_obj
def train(state: State, config, sets, overrides, validate_only, strict, seeds, resume, experiment_name, run_name,
          register_model, alias, no_report, force):
    """Train a model; every number goes to one MLflow run."""
    from mixvae import run as runner

    shortcuts = {}
    if experiment_name:
        shortcuts["tracking.experiment_name"] = experiment_name
    if run_name:
        shortcuts["tracking.run_name"] = run_name
    if register_model is not None:
        shortcuts["tracking.register_model"] = register_model or None
    if alias:
        shortcuts["tracking.model_alias"] = alias
    if no_report:
        shortcuts["tracking.report"] = False
    items = _gather_overrides(sets, overrides)
    console = state.console
    if seeds and resume:
        _fail(state, "--seeds and --resume are mutually exclusive", EXIT_USAGE)
    if force and not resume:
        _fail(state, "--force only goes with --resume", EXIT_USAGE)
    if resume:
        from mixvae.cli.resume import resume as _resume
        _resume(state, resume, config, items, shortcuts, force)
        return
    if not config:
        _fail(state, "missing option '--config' / '-c' (a config path or preset name, e.g. quick)", EXIT_USAGE)
    loaded, ds, report, arch = _validate(state, config, items, strict, shortcuts)
    if validate_only:
        _out("valid=true")
        _out(f"architecture={arch}")
        return
    kw = dict(cli_uri=state.tracking_uri, experiment_from_cli=bool(experiment_name),
              run_name_explicit=bool(run_name), verbose=state.verbose)
    if seeds:
        refuse_in_job(state, "--seeds")
        try:
            seed_list = _parse_seeds(seeds)
        except ValueError:
            _fail(state, f"--seeds {seeds!r}: expected a list like 0,1,2 or a range like 0-4", EXIT_USAGE)
        _train_seeds(state, loaded, seed_list, kw)
        return
    try:
        outcome = runner.train(loaded, console, **kw)
    except runner.UsageError as exc:
        _fail(state, str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        _fail(state, "interrupted before training started", EXIT_INTERRUPTED)
    for line in outcome.stdout:
        _out(line)
    sys.exit(outcome.exit_code)


def _train_seeds(state: State, loaded, seeds: list[int], kw: dict) -> None:
    """--seeds: one child run per seed under a seed_group parent."""
    import copy

    from mixvae import run as runner
    from mixvae.tracking.seeds import close_seed_group, open_seed_group

    cfg = loaded.config
    parent = open_seed_group(loaded, state.tracking_uri, kw["experiment_from_cli"], seeds)
    codes, child_ids = [], []
    try:
        for seed in seeds:
            child = copy.deepcopy(loaded)
            child.config.training.seed = seed
            child.overrides = list(loaded.overrides) + [f"training.seed={seed}"]
            state.console.print(f"— seed {seed} —")
            try:
                outcome = runner.train(child, state.console, nested_parent_id=parent.run_id, **kw)
            except runner.UsageError as exc:
                _fail(state, str(exc), EXIT_USAGE)
            codes.append(outcome.exit_code)
            if outcome.run_id:
                child_ids.append(outcome.run_id)
                _out(f"run_id={outcome.run_id}")
            if outcome.exit_code == EXIT_INTERRUPTED:
                break
    except KeyboardInterrupt:
        codes.append(EXIT_INTERRUPTED)
    report = close_seed_group(parent, child_ids, codes, cfg.tracking.report_dir, state.console)
    _out(f"group_run_id={parent.run_id}")
    if report:
        _out(f"report={shown(report)}")
    sys.exit(max(codes) if codes else EXIT_RUNTIME)


# --- report and compare --------------------------------------------------------------------------------

@main.command()
@click.argument("run_id")
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Output directory.")
@click.option("--no-upload", is_flag=True, help="Do not log the regenerated files back to the run.")
@click.option("--no-html", is_flag=True, help="Skip REPORT.html.")
@click.pass_obj
def report(state: State, run_id, out_dir, no_upload, no_html):
    """Rebuild figures, REPORT.md and REPORT.html of RUN_ID from the MLflow run alone (a sweep's parent run:
    the sweep report, from the parent and its trial runs)."""
    from mixvae.reporting import build_report_for_run, build_sweep_report_for_run
    from mixvae.tracking.sweep_record import sweep_parent_id
    from mixvae.tracking_uri import resolve_tracking_uri
    from mixvae.tracking.writer import RunNotFound, TrackingError

    uri = resolve_tracking_uri(state.tracking_uri, None)[0]
    entry_run = os.environ.get("MLFLOW_RUN_ID")
    try:
        if full_id := sweep_parent_id(run_id, uri):
            path = build_sweep_report_for_run(full_id, uri, "reports", html=not no_html,
                                              out_dir=Path(out_dir) if out_dir else None, upload=not no_upload)
        else:
            path, full_id = build_report_for_run(run_id, uri, "reports", html=not no_html, console=state.console,
                                                 out_dir=Path(out_dir) if out_dir else None, upload=not no_upload)
    except RunNotFound as exc:
        _fail(state, str(exc), EXIT_USAGE)
    except TrackingError as exc:
        _fail(state, str(exc), EXIT_RUNTIME)
    except Exception as exc:
        if state.verbose:
            traceback.print_exc()
        _fail(state, f"the report could not be built: {type(exc).__name__}: {exc}", EXIT_RUNTIME)
    if entry_run:
        from mixvae.tracking.entry_points import log_entry_point_files
        log_entry_point_files(entry_run, uri, [path], kind="report", extra_tags={"mixvae.report_of": full_id})
    state.console.print(f"report      {shown(path)}")
    _out(f"report={shown(path)}")


@main.command()
@click.argument("runs", nargs=-1, required=True)
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Output directory.")
@click.option("--baseline", default=None, help="Run the deltas are computed against (default: the first).")
@click.option("--metrics", default=None, help="Summary keys for the metric table, comma-separated.")
@click.pass_obj
def compare(state: State, runs, out_dir, baseline, metrics):
    """Build COMPARE.md for two or more runs."""
    from mixvae.report import build_compare, default_compare_dir
    from mixvae.paths import under_work_dir
    from mixvae.tracking.record import load_run
    from mixvae.tracking_uri import resolve_tracking_uri
    from mixvae.tracking.writer import RunNotFound, TrackingError

    ids: list[str] = []
    for arg in runs:
        for part in arg.replace(",", " ").split():
            if part and part not in ids:
                ids.append(part)
    uri = resolve_tracking_uri(state.tracking_uri, None)[0]
    try:
        records = [load_run(i, uri) for i in ids]
    except RunNotFound as exc:
        _fail(state, str(exc), EXIT_USAGE)
    except TrackingError as exc:
        _fail(state, str(exc), EXIT_RUNTIME)
    unique = {r.run_id: r for r in records}
    if len(unique) < 2:
        _fail(state, "compare needs at least two runs", EXIT_USAGE)
    records = list(unique.values())
    base = None
    if baseline:
        matches = [r.run_id for r in records if r.run_id.startswith(baseline)]
        if len(matches) != 1:
            _fail(state, f"--baseline {baseline}: not one of the compared runs", EXIT_USAGE)
        base = matches[0]
    keys = [k.strip() for k in metrics.split(",")] if metrics else None
    out = Path(out_dir) if out_dir else under_work_dir(default_compare_dir([r.run_id for r in records]))
    try:
        path = build_compare(records, out, baseline=base, metrics=keys)
    except Exception as exc:
        if state.verbose:
            traceback.print_exc()
        _fail(state, f"the comparison could not be built: {type(exc).__name__}: {exc}", EXIT_RUNTIME)
    entry_run = os.environ.get("MLFLOW_RUN_ID")
    if entry_run:
        from mixvae.tracking.entry_points import log_entry_point_files
        log_entry_point_files(entry_run, uri, [path, path.parent / "compare_figures"], kind="compare")
    state.console.print(f"report      {shown(path)}")
    _out(f"report={shown(path)}")


# --- runs ------------------------------------------------------------------------------------------------

@main.command()
@click.option("--experiment", "experiments", multiple=True, help="Experiment to list (repeatable).")
@click.option("--all-experiments", is_flag=True)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--status", type=click.Choice(["RUNNING", "FINISHED", "FAILED", "KILLED"]), default=None)
@click.option("--filter", "filter_", default=None, help="An MLflow search filter.")
@click.option("--all-kinds", is_flag=True, help="Also list validate, report, compare, seed_group and sweep runs.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table")
@click.pass_obj
def runs(state: State, experiments, all_experiments, limit, status, filter_, all_kinds, fmt):
    """List runs, newest first."""
    from mixvae.tracking.listing import ListingError, format_rows, list_runs
    from mixvae.tracking_uri import resolve_tracking_uri
    from mixvae.tracking.writer import TrackingError

    uri = resolve_tracking_uri(state.tracking_uri, None)[0]
    try:
        rows = list_runs(uri, experiments=list(experiments) or ["mixvae"], all_experiments=all_experiments,
                         limit=limit, status=status, filter=filter_, all_kinds=all_kinds)
    except ListingError as exc:
        _fail(state, str(exc), EXIT_USAGE)
    except TrackingError as exc:
        _fail(state, str(exc), EXIT_RUNTIME)
    _out(format_rows(rows, fmt))


main.add_command(sync_command)  # `mixvae sync RUN_ID` (mixvae/tracking/sync.py)
main.add_command(sweep_command)  # `mixvae sweep CONFIG --space SPACE.yaml` (mixvae/cli/sweep.py)


def run() -> None:
    """The console entry (`mixvae`, `python -m mixvae`): the command, then the quick exit above."""
    global _exit_code
    try:
        main()
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            _exit_code = exc.code or 0
        raise


if __name__ == "__main__":  # pragma: no cover
    run()
