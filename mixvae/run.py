"""What `mixvae train` does, in order, as named steps: load data → open the MLflow run → log inputs
(params, dataset, config) → train (compile, epochs, best restore and final evaluation) → finish
(summary, diagnostics, checkpoints) → log model → report → close with the run's status.

The CLI parses options; this module owns the sequence and its failure paths: a runtime failure marks
the run FAILED with the reason and keeps the last checkpoint; Ctrl-C or SIGTERM marks it KILLED and
uploads the last checkpoint so that `mixvae train --resume` can continue it. Local files go under
`paths.checkpoints_dir(run_id)` in the working directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mixvae import __version__, compilation_cache, job, paths, reporting
from mixvae.config import (Loaded, architecture_code, config_hash, flatten, model_summary_line, to_yaml)
from mixvae.console import Console, print_phases, startup_seconds
from mixvae.tracking_uri import redact, redact_uri, ui_link

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Exit 2 with this message, no traceback."""


@dataclass
class Outcome:
    exit_code: int
    stdout: list[str] = field(default_factory=list)
    run_id: str | None = None
    status: str | None = None
    summary_metrics: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)   # wall seconds per phase (bench/quick_e2e.py reads them)


class _Phase:
    """Adds the wall time of a block to ``phases[name]``."""

    def __init__(self, phases: dict, name: str):
        self.phases, self.name = phases, name

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.phases[self.name] = self.phases.get(self.name, 0.0) + time.perf_counter() - self.t0


def git_info() -> tuple[str, str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return "unknown", "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5)
        return commit.stdout.strip(), "true" if dirty.stdout.strip() else "false"
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def run_tags(loaded: Loaded, ds, arch: str) -> dict[str, str]:
    cfg = loaded.config
    commit, dirty = git_info()
    tags = {
        "mixvae.kind": "train", "mixvae.version": __version__, "mixvae.architecture": arch,
        "mixvae.config_hash": config_hash(cfg), "mixvae.config_hash_noseed": config_hash(cfg, with_seed=False),
        "mixvae.config_name": loaded.name, "mixvae.git_commit": commit, "mixvae.git_dirty": dirty,
        "mixvae.dataset": ds.name, "mixvae.dataset_digest": ds.digest, "mixvae.split_sizes": ds.split_sizes,
        "mixvae.overrides": "; ".join(loaded.overrides),
    }
    tags.update(cfg.experiment.tags)
    return tags


class _Sigterm:
    """Turn SIGTERM into the Ctrl-C path while training runs."""

    def __enter__(self):
        def handler(signum, frame):
            raise KeyboardInterrupt
        try:
            self.previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread
            self.previous = None
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


@dataclass
class _Run:
    """What every step of a training run works with, once the MLflow run exists."""
    loaded: Loaded
    ds: object                   # mixvae.data.Dataset
    writer: object               # mixvae.tracking.writer.RunWriter
    console: Console
    uri: str
    uri_source: str
    run_dir: Path                # local checkpoints, diagnostics, weights and staged artifacts
    t_start: float
    out: Outcome
    verbose: bool
    epoch_hook: object = None    # called after each epoch; a returned reason stops the run (a sweep's pruner)

    @property
    def cfg(self):
        return self.loaded.config

    @property
    def run_id(self) -> str:
        return self.writer.run_id

    @property
    def staging(self) -> Path:
        return self.run_dir / "artifacts"


def train(loaded: Loaded, console: Console, *, cli_uri: str | None = None, experiment_from_cli: bool = False,
          run_name_explicit: bool = False, resume_run_id: str | None = None, resume_dir: Path | None = None,
          resume_overrides: list[str] | None = None, nested_parent_id: str | None = None,
          verbose: bool = False, resume_logged: frozenset[int] = frozenset(), extra_tags: dict | None = None,
          epoch_hook=None) -> Outcome:
    """One training run, start to status; `resume_logged`: the epochs a resumed run already holds;
    `extra_tags` go on the new run; `epoch_hook(epoch, metrics)` may return a reason to stop (the run then
    ends KILLED with that reason and the tag mixvae.pruned, after its final evaluation).
    Raises UsageError for exit-2 problems found before a run exists."""
    from mixvae.tracking.writer import TrackingError
    from mixvae.tracking_uri import check_uri, resolve_tracking_uri

    t_start = time.perf_counter()
    phases: dict[str, float] = {"startup": startup_seconds()}
    compilation_cache.enable()
    ds = _load_data(loaded.config, console, phases)
    uri, uri_source = resolve_tracking_uri(cli_uri, loaded.config.tracking.uri)
    problem = check_uri(uri) or job.join_job(loaded.config, bool(resume_run_id or nested_parent_id))
    if problem:
        raise UsageError(problem)
    pending = None
    if job.from_env() is None and resume_dir is None:  # build and compile while the MLflow run is opened
        from mixvae.train.loop import BackgroundTrainer
        pending = BackgroundTrainer(loaded, ds, console, t_start)
    try:
        with _Phase(phases, "store"):  # in a job of several processes only process 0 opens the run
            loaded, console, writer, run_dir = job.open_in_job(loaded, console, lambda: _open_run(
                loaded, ds, uri, run_name_explicit=run_name_explicit, experiment_from_cli=experiment_from_cli,
                resume_run_id=resume_run_id, nested_parent_id=nested_parent_id, resume_logged=resume_logged,
                extra_tags=extra_tags))
    except TrackingError as exc:
        console.error(f"error: {exc}")
        _settle(pending)
        return Outcome(EXIT_RUNTIME)
    except BaseException:  # Ctrl-C while the run is being opened
        _settle(pending)
        raise
    run = _Run(loaded, ds, writer, console, uri, uri_source, run_dir, t_start,
               Outcome(EXIT_RUNTIME, run_id=writer.run_id, phases=phases), verbose, epoch_hook)
    try:
        return _train_in_run(run, resume_dir, resume_overrides, pending)
    finally:
        _settle(pending)  # whatever ended the run, never leave XLA compiling on a thread at exit
        writer.close(timeout=30)


def _load_data(cfg, console: Console, phases: dict) -> object:
    from mixvae.data import DataError, load_dataset
    try:
        with _Phase(phases, "data"):
            ds = load_dataset(cfg, allow_download=True)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    for w in ds.warnings:
        console.print(f"warning: {w}")
    return ds


def _open_run(loaded: Loaded, ds, uri: str, *, run_name_explicit: bool, experiment_from_cli: bool,
              resume_run_id: str | None, nested_parent_id: str | None, resume_logged: frozenset[int],
              extra_tags: dict | None = None):
    """A new MLflow run (or the resumed one) with its name, tags and description; its writer beats
    with the epochs and does not log again the epochs a resumed run already holds."""
    from mixvae.tracking.mlflow_run import open_run
    from mixvae.tracking.ownership import OwnedWriter
    cfg = loaded.config
    arch = architecture_code(cfg, ds.n_labeled)
    writer = open_run(uri=uri, experiment_name=cfg.tracking.experiment_name,
                      run_name=cfg.tracking.run_name or f"{cfg.experiment.name}-{arch}",
                      run_name_explicit=run_name_explicit or bool(cfg.tracking.run_name),
                      experiment_from_cli=experiment_from_cli, resume_run_id=resume_run_id,
                      tags={**run_tags(loaded, ds, arch), **(extra_tags or {})}, description=cfg.experiment.description or None,
                      nested_parent_id=nested_parent_id, log_system_metrics=cfg.tracking.log_system_metrics,
                      outage_tolerance=cfg.tracking.outage_tolerance_sec)
    return OwnedWriter(writer, skip_epochs=resume_logged)


def _train_in_run(run: _Run, resume_dir: Path | None, resume_overrides: list[str] | None, pending) -> Outcome:
    """The steps inside an open run: log inputs → train → finish → log model → report → status.
    ``pending``: the trainer being built and compiled in the background, or None to build it here."""
    from mixvae.train.loop import Trainer

    _log_inputs(run, resume_dir, resume_overrides)
    _print_run_header(run)
    if pending is None:
        with _Phase(run.out.phases, "build"):
            trainer = Trainer(run.loaded, run.ds, run.writer, run.console, run_dir=run.run_dir, t_start=run.t_start)
    else:
        trainer = _wait_for(run, pending)
        if isinstance(trainer, Outcome):
            return trainer
    trainer.epoch_hook = run.epoch_hook
    _print_training_header(run, trainer)
    if resume_dir is not None:
        trainer.restore_last(resume_dir)
        run.console.print(f"  resumed     from epoch {trainer.epoch}{run.writer.resume_note(trainer.epoch)}")
        run.writer.set_tags({"mixvae.resumed_from_epoch": str(trainer.epoch)})
    result, status, reason = _train(run, trainer)
    if status == "KILLED":
        return _killed(run, trainer)
    if result is None or result.summary is None:
        return _close(run, "FAILED", reason or "training failed", EXIT_RUNTIME)
    exit_code = _finish(run, result, status, reason)
    if result.stop_requested:  # stopped by the epoch hook (a sweep's pruner): kept whole, marked KILLED
        status, reason = "KILLED", result.stop_requested
        run.writer.set_tags({"mixvae.pruned": "true"})
    if not run.writer.flush():  # the store stayed away: the model and the report wait for `mixvae sync`
        return _close(run, status, reason, EXIT_RUNTIME)
    if status == "FINISHED" and run.cfg.tracking.log_model and not _log_model(run, result):
        exit_code = EXIT_RUNTIME
    if run.cfg.tracking.report and not _report(run, status):
        exit_code = EXIT_RUNTIME
    return _close(run, status, reason, exit_code)


def _log_inputs(run: _Run, resume_dir: Path | None, resume_overrides: list[str] | None) -> None:
    """Params, the dataset and the input config for a new run (the resume overrides for a resumed one),
    and the resolved config either way."""
    from mixvae.data import dataset_record
    writer, staging = run.writer, run.staging
    staging.mkdir(parents=True, exist_ok=True)
    if resume_dir is None:
        writer.log_params(flatten(run.cfg))
        writer.log_inputs(list(dataset_record(run.ds).values()))
        (staging / "config.input.yaml").write_text(redact_uri(run.loaded.input_text))
        writer.log_artifact(staging / "config.input.yaml")
    else:
        writer.set_tags({"mixvae.resume_overrides": "; ".join(resume_overrides or [])})
    (staging / "config.yaml").write_text(to_yaml(run.cfg))
    writer.log_artifact(staging / "config.yaml")


def _print_run_header(run: _Run) -> None:
    console, writer = run.console, run.writer
    console.print(f"mixvae {__version__} · train · {run.loaded.path}")
    console.print(f"  run         {run.run_id}  \"{writer.run_name}\"  experiment \"{writer.experiment_name}\"")
    console.print(f"  tracking    {redact(run.uri)}  ({run.uri_source})")
    if link := ui_link(run.uri, writer.experiment_id, run.run_id):
        console.print(f"  ui          {link}")
    console.print(f"  data        {run.ds.summary_line()}")
    console.print(f"  model       {model_summary_line(run.cfg)}")


def _print_training_header(run: _Run, trainer) -> None:
    import jax
    t, console = run.cfg.training, run.console
    remainder = "remainder dropped" if t.drop_remainder else "last batch padded"
    n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(trainer.state.params))
    console.print(f"  parameters  {n_params:,} trainable")
    console.print(f"  training    adamw lr {t.learning_rate:g} wd "
                  f"{t.weight_decay:g} · batch {t.batch_size} ({trainer.fns.steps} steps/epoch, {remainder}) · "
                  f"≤{t.max_epochs} epochs")
    if t.patience is not None:
        console.print(f"              early stopping on {t.monitor} ({trainer.stopper.mode}, patience {t.patience})")
    count, device = trainer.placement.count, jax.local_devices()[0]
    what = f"{device.platform} ({os.cpu_count()} cores)" if device.platform == "cpu" else device.device_kind
    split = f" · data-parallel, {t.batch_size // count} images per device per batch" if count > 1 else ""
    console.print(f"  device      {f'{count} × ' if count > 1 else ''}{what}{split}")
    if trainer.warm_start_note:
        console.print(f"  warm start  {trainer.warm_start_note}")
    for w in run.loaded.warnings:
        console.print(f"  warning     {w}")


def _train(run: _Run, trainer):
    """Compile and train; → (result or None, status, reason). Ctrl-C or SIGTERM gives KILLED; any other
    exception FAILED with its reason, the traceback logged and the last checkpoint uploaded."""
    status, reason, result = "FAILED", None, None
    with _Sigterm():
        try:
            if not trainer.compiled:  # a trainer built in the background is compiled already
                with _Phase(run.out.phases, "compile"):
                    trainer.compile()
            seconds = trainer.compile_time
            run.console.print(f"compiling … done in {seconds:.1f} s")
            result = trainer.run()
            run.out.phases.update(trainer.timings)
        except KeyboardInterrupt:
            status, reason = "KILLED", f"interrupted at epoch {trainer.epoch + 1}"
        except Exception as exc:  # a bug or a tracking failure: FAILED with the reason
            reason = _failure_reason(exc)
            _log_traceback(run, trainer, reason, traceback.format_exc())
    if result is not None:
        status, reason = result.status, result.reason
    return result, status, reason


def _log_traceback(run: _Run, trainer, reason: str, tb: str) -> None:
    logs = run.staging / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "traceback.txt").write_text(tb)
    run.console.error(f"training failed: {reason}")
    if run.verbose:
        run.console.error(tb)
    try:
        run.writer.log_artifact(logs / "traceback.txt", "logs")
        trainer.upload_last()
    except Exception:
        pass


def _settle(pending) -> None:
    if pending is not None:
        pending.settle()


def _wait_for(run: _Run, pending):
    """The background trainer, attached to the run; → an Outcome instead when building or compiling
    it failed (FAILED with the reason) or Ctrl-C came first (KILLED: nothing to resume yet)."""
    try:
        with _Phase(run.out.phases, "compile"):
            trainer = pending.wait()
    except KeyboardInterrupt:
        _settle(pending)
        return _close(run, "KILLED", "interrupted before the first epoch", EXIT_INTERRUPTED)
    except Exception as exc:
        reason = _failure_reason(exc)
        run.console.error(f"training failed: {reason}")
        return _close(run, "FAILED", reason, EXIT_RUNTIME)
    trainer.attach(run.writer, run.run_dir)
    return trainer


def _killed(run: _Run, trainer) -> Outcome:
    """Interrupted: the last checkpoint uploaded so that the run can be resumed, the run marked KILLED."""
    try:
        trainer.upload_last()
    except Exception:
        pass
    msg = (f"interrupted at epoch {trainer.epoch + 1}; run {run.run_id} marked KILLED; "
           f"resume with: mixvae train --resume {run.run_id}")
    run.console.error(msg)
    return _close(run, "KILLED", msg, EXIT_INTERRUPTED)


def _finish(run: _Run, result, status: str, reason: str | None) -> int:
    """Training ended (FINISHED, or FAILED by the non-finite-loss guard with a best snapshot): summary,
    diagnostics, curriculum events and checkpoints go to the run. → the exit code so far."""
    from mixvae.train.summary import jsonable
    writer, staging, console = run.writer, run.staging, run.console
    exit_code = EXIT_OK
    if result.stop_message and status == "FINISHED":
        console.print(result.stop_message)
    if status == "FAILED":
        console.error(f"training failed at epoch {result.epochs_completed + 1}: {reason} (run {run.run_id})")
        exit_code = EXIT_RUNTIME
    summary = dict(result.summary, run_id=run.run_id, status=status)
    run.out.summary_metrics = result.summary_metrics
    writer.log_summary(result.summary_metrics)
    (staging / "summary.json").write_text(json.dumps(jsonable(summary), indent=2, sort_keys=True))
    writer.log_artifact(staging / "summary.json")
    writer.log_artifacts(run.run_dir / "diagnostics", "diagnostics")
    if run.cfg.curriculum.enabled:
        (staging / "curriculum").mkdir(exist_ok=True)
        (staging / "curriculum" / "events.json").write_text(json.dumps(summary["curriculum"]["events"], indent=2))
        writer.log_artifact(staging / "curriculum" / "events.json", "curriculum")
    tag_updates = {"mixvae.summary_split": summary["summary_split"]}
    if summary.get("clustering_acc_method"):
        tag_updates["mixvae.clustering_acc_method"] = summary["clustering_acc_method"]
    writer.set_tags(tag_updates)
    if run.cfg.tracking.log_checkpoints:
        writer.log_artifacts(run.run_dir / "checkpoints" / "best", "checkpoints/best")
        writer.log_artifacts(run.run_dir / "checkpoints" / "last", "checkpoints/last")
    console.print(_summary_line(summary, result))
    return exit_code


def _summary_line(summary: dict, result) -> str:
    m = result.summary_metrics
    parts = [f"loss.total {m['loss.total']:.2f}"]
    if "clustering.acc" in m:
        parts.append(f"clustering.acc {m['clustering.acc']:.3f} ({summary.get('clustering_acc_method')})")
    if "mixture.K_eff" in m:
        parts.append(f"mixture.K_eff {m['mixture.K_eff']:.1f}")
    return f"summary ({summary['summary_split']} split, epoch {result.best_epoch}): " + " · ".join(parts)


def _log_model(run: _Run, result) -> bool:
    """The logged pyfunc model of the best epoch, registered when configured. → False when it failed."""
    cfg, writer, ds = run.cfg, run.writer, run.ds
    model_line, ok = None, True
    try:
        from mixvae.tracking.model_logging import log_model, make_data_meta, register
        writer.flush()
        meta = make_data_meta(image_shape=ds.image_shape, scale_used=ds.scale_used,
                              num_components=cfg.model.num_components, num_classes=cfg.model.num_classes,
                              prediction_keys=prediction_keys(cfg, ds.n_labeled))
        t_model = time.perf_counter()
        model_uri = log_model(run.run_id, weights_path=result.weights_path,
                              config_yaml_path=run.staging / "config.yaml", data_meta=meta,
                              input_example=result.input_example, uri=run.uri)
        run.out.phases["model"] = time.perf_counter() - t_model
        run.out.stdout.append(f"model_uri={model_uri}")
        model_line = f"model       {model_uri}"
        if cfg.tracking.register_model:
            version = register(model_uri, cfg.tracking.register_model, cfg.tracking.model_alias, run_id=run.run_id,
                               uri=run.uri)
            model_line += f"  registered {cfg.tracking.register_model} v{version} @{cfg.tracking.model_alias}"
        writer.set_tags({"mixvae.model_status": "ok"})
    except Exception as exc:
        writer.set_tags({"mixvae.model_status": "failed"})
        run.console.error(f"training finished but model registration failed: {_failure_reason(exc)}")
        ok = False
    if model_line:
        run.console.print(model_line)
    return ok


def _report(run: _Run, status: str) -> bool:
    """REPORT.md (and .html) built from the run itself and logged back to it. → False when it failed."""
    cfg = run.cfg
    try:
        t_report = time.perf_counter()
        report_path, _ = reporting.build_report_for_run(run.run_id, run.uri, cfg.tracking.report_dir,
                                                        html=cfg.tracking.html, console=run.console,
                                                        writer=run.writer, final_status=status)
        run.out.phases["report"] = time.perf_counter() - t_report
        run.out.stdout.append(f"report={paths.shown(report_path)}")
        run.console.print(f"report      {paths.shown(report_path)}")
        run.writer.set_tags({"mixvae.report_status": "ok"})
    except Exception as exc:
        run.writer.set_tags({"mixvae.report_status": "failed"})
        run.console.error(f"training finished but the report failed: {_failure_reason(exc)}; "
                          f"retry with mixvae report {run.run_id}")
        return False
    return True


def prediction_keys(cfg, num_labeled: int) -> list[str]:
    """The outputs of the logged model for this configuration."""
    keys = ["reconstruction_error"]
    if cfg.model.is_mixture_based:
        keys += ["component", "responsibilities"]
    if cfg.model.use_tau_classifier or cfg.model.head_trained(num_labeled):
        keys += ["predicted_label", "certainty"]
    if cfg.model.use_tau_classifier:
        keys.append("ood_score")
    return keys


def _close(run: _Run, status: str, reason: str | None, code: int) -> Outcome:
    """train.log to the run, the run's final status, and the outcome the CLI prints."""
    writer, console, staging, out = run.writer, run.console, run.staging, run.out
    (staging / "logs").mkdir(exist_ok=True)
    (staging / "logs" / "train.log").write_text(console.log_text())
    try:
        writer.log_artifact(staging / "logs" / "train.log", "logs")
    except Exception:
        pass
    ok = writer.set_status(status, reason if status != "FINISHED" else None,
                           flush_timeout=10 if status == "KILLED" else None)
    if getattr(writer, "undelivered", None):  # kept on local disk until `mixvae sync` delivers it
        console.error(writer.undelivered)
        code = max(code, EXIT_RUNTIME)
    elif not ok and status == "FINISHED":
        console.error(f"tracking failure: could not mark run {out.run_id} {status}: {writer.error}")
        code = EXIT_RUNTIME
    out.status = status
    out.exit_code = code
    print_phases(console, out.phases, run.t_start)
    out.stdout = [f"run_id={out.run_id}", f"status={status}"] + out.stdout
    return out


def _failure_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if type(exc).__name__ == "TrackingError":
        return text
    if "RESOURCE_EXHAUSTED" in text or isinstance(exc, MemoryError):
        return ("out of memory; reduce training.batch_size, training.eval_batch_size or model.num_components, "
                "or set model.top_m_gating")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
