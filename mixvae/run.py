"""What `mixvae train` does, in order: data → MLflow run → params, tags, inputs →
compile → train → best restore, final evaluation → summary, diagnostics, checkpoints, model → report →
run status. The CLI parses options; this module owns the sequence and its failure paths.
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

from mixvae import __version__
from mixvae.config import (Loaded, architecture_code, config_hash, flatten, model_summary_line, to_yaml)
from mixvae.console import Console

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


def train(loaded: Loaded, console: Console, *, cli_uri: str | None = None, experiment_from_cli: bool = False,
          run_name_explicit: bool = False, resume_run_id: str | None = None, resume_dir: Path | None = None,
          resume_overrides: list[str] | None = None, nested_parent_id: str | None = None,
          verbose: bool = False) -> Outcome:
    """One training run, start to status. Raises UsageError for exit-2 problems found before a run exists."""
    from mixvae.data import DataError, load_dataset
    from mixvae.tracking_uri import check_uri, resolve_tracking_uri

    t_start = time.perf_counter()
    cfg = loaded.config
    phases: dict[str, float] = {}
    try:
        with _Phase(phases, "data"):
            ds = load_dataset(cfg, allow_download=True)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    for w in ds.warnings:
        console.print(f"warning: {w}")

    uri, uri_source = resolve_tracking_uri(cli_uri, cfg.tracking.uri)
    problem = check_uri(uri)
    if problem:
        raise UsageError(problem)
    from mixvae.tracking.mlflow_run import open_run
    from mixvae.tracking.writer import TrackingError

    arch = architecture_code(cfg, ds.n_labeled)
    run_name = cfg.tracking.run_name or f"{cfg.experiment.name}-{arch}"
    tags = run_tags(loaded, ds, arch)
    try:
        with _Phase(phases, "store"):
            writer = open_run(uri=uri, experiment_name=cfg.tracking.experiment_name, run_name=run_name,
                              run_name_explicit=run_name_explicit or bool(cfg.tracking.run_name),
                              experiment_from_cli=experiment_from_cli, resume_run_id=resume_run_id, tags=tags,
                              description=cfg.experiment.description or None,
                              nested_parent_id=nested_parent_id, log_system_metrics=cfg.tracking.log_system_metrics)
    except TrackingError as exc:
        console.error(f"error: {exc}")
        return Outcome(EXIT_RUNTIME)
    run_id = writer.run_id
    run_dir = Path(".mixvae") / "checkpoints" / run_id
    out = Outcome(EXIT_RUNTIME, run_id=run_id, phases=phases)
    try:
        return _train_in_run(loaded, ds, writer, console, uri, uri_source, arch, run_dir, t_start, out,
                             resume_dir=resume_dir, resume_overrides=resume_overrides, verbose=verbose)
    finally:
        writer.close(timeout=30)


def _train_in_run(loaded, ds, writer, console, uri, uri_source, arch, run_dir, t_start, out: Outcome, *,
                  resume_dir, resume_overrides, verbose) -> Outcome:
    from mixvae.data import dataset_record
    from mixvae.train.loop import Trainer

    cfg = loaded.config
    run_id = writer.run_id
    staging = run_dir / "artifacts"
    staging.mkdir(parents=True, exist_ok=True)
    if resume_dir is None:
        writer.log_params(flatten(cfg))
        writer.log_inputs(list(dataset_record(ds).values()))
        (staging / "config.input.yaml").write_text(loaded.input_text)
        writer.log_artifact(staging / "config.input.yaml")
    else:
        writer.set_tags({"mixvae.resume_overrides": "; ".join(resume_overrides or [])})
    (staging / "config.yaml").write_text(to_yaml(cfg))
    writer.log_artifact(staging / "config.yaml")

    t = cfg.training
    steps = ds.n_train // t.batch_size if t.drop_remainder else -(-ds.n_train // t.batch_size)
    remainder = "remainder dropped" if t.drop_remainder else "last batch padded"
    console.print(f"mixvae {__version__} · train · {loaded.path}")
    console.print(f"  run         {run_id}  \"{writer.run_name}\"  experiment \"{writer.experiment_name}\"")
    console.print(f"  tracking    {uri}  ({uri_source})")
    console.print(f"  data        {ds.summary_line()}")
    console.print(f"  model       {model_summary_line(cfg)}")
    trainer = Trainer(loaded, ds, writer, console, run_dir=run_dir, t_start=t_start)
    import jax
    n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(trainer.state.params))
    console.print(f"  parameters  {n_params:,} trainable")
    console.print(f"  training    adamw lr {t.learning_rate:g} wd "
                  f"{t.weight_decay:g} · batch {t.batch_size} ({steps} steps/epoch, {remainder}) · "
                  f"≤{t.max_epochs} epochs")
    if t.patience is not None:
        console.print(f"              early stopping on {t.monitor} ({trainer.monitor_mode}, patience {t.patience})")
    devices = jax.devices()
    console.print(f"  device      {devices[0].platform} ({os.cpu_count()} cores)" if devices[0].platform == "cpu"
                  else f"  device      {devices[0].device_kind}")
    for w in loaded.warnings:
        console.print(f"  warning     {w}")
    if resume_dir is not None:
        trainer.restore_last(resume_dir)
        console.print(f"  resumed     from epoch {trainer.epoch}")
        writer.set_tags({"mixvae.resumed_from_epoch": str(trainer.epoch)})

    status, reason = "FAILED", None
    with _Sigterm():
        try:
            with _Phase(out.phases, "compile"):
                seconds = trainer.compile()
            console.print(f"compiling … done in {seconds:.1f} s")
            result = trainer.run()
            out.phases.update(trainer.timings)
        except KeyboardInterrupt:
            result = None
            status, reason = "KILLED", f"interrupted at epoch {trainer.epoch + 1}"
        except Exception as exc:  # a bug or a tracking failure: FAILED with the reason
            result = None
            reason = _failure_reason(exc)
            tb = traceback.format_exc()
            (staging / "logs").mkdir(exist_ok=True)
            (staging / "logs" / "traceback.txt").write_text(tb)
            console.error(f"training failed: {reason}")
            if verbose:
                console.error(tb)
            try:
                writer.log_artifact(staging / "logs" / "traceback.txt", "logs")
                trainer.upload_last()
            except Exception:
                pass

    if result is not None:
        status, reason = result.status, result.reason
    if status == "KILLED":
        try:
            trainer.upload_last()
        except Exception:
            pass
        msg = (f"interrupted at epoch {trainer.epoch + 1}; run {run_id} marked KILLED; "
               f"resume with: mixvae train --resume {run_id}")
        console.error(msg)
        return _close(writer, console, staging, out, "KILLED", msg, EXIT_INTERRUPTED)
    if result is None or result.summary is None:
        return _close(writer, console, staging, out, "FAILED", reason or "training failed", EXIT_RUNTIME)

    # Training ended (FINISHED, or FAILED by the NaN guard with a best snapshot).
    exit_code = EXIT_OK
    if result.stop_message and status == "FINISHED":
        console.print(result.stop_message)
    if status == "FAILED":
        console.error(f"training failed at epoch {result.epochs_completed + 1}: {reason} (run {run_id})")
        exit_code = EXIT_RUNTIME
    summary = dict(result.summary, run_id=run_id, status=status)
    out.summary_metrics = result.summary_metrics
    writer.log_summary(result.summary_metrics)
    (staging / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2, sort_keys=True))
    writer.log_artifact(staging / "summary.json")
    writer.log_artifacts(run_dir / "diagnostics", "diagnostics")
    if cfg.curriculum.enabled:
        (staging / "curriculum").mkdir(exist_ok=True)
        (staging / "curriculum" / "events.json").write_text(json.dumps(summary["curriculum"]["events"], indent=2))
        writer.log_artifact(staging / "curriculum" / "events.json", "curriculum")
    tag_updates = {"mixvae.summary_split": summary["summary_split"]}
    if summary.get("clustering_acc_method"):
        tag_updates["mixvae.clustering_acc_method"] = summary["clustering_acc_method"]
    writer.set_tags(tag_updates)
    if cfg.tracking.log_checkpoints:
        writer.log_artifacts(run_dir / "checkpoints" / "best", "checkpoints/best")
        writer.log_artifacts(run_dir / "checkpoints" / "last", "checkpoints/last")
    m = result.summary_metrics
    parts = [f"loss.total {m['loss.total']:.2f}"]
    if "clustering.acc" in m:
        parts.append(f"clustering.acc {m['clustering.acc']:.3f} ({summary.get('clustering_acc_method')})")
    if "mixture.K_eff" in m:
        parts.append(f"mixture.K_eff {m['mixture.K_eff']:.1f}")
    console.print(f"summary ({summary['summary_split']} split, epoch {result.best_epoch}): " + " · ".join(parts))

    # Model (FINISHED runs only) and registry.
    if status == "FINISHED" and cfg.tracking.log_model:
        model_line = None
        try:
            from mixvae.tracking.model_logging import log_model, make_data_meta, register
            writer.flush()
            meta = make_data_meta(image_shape=ds.image_shape, scale_used=ds.scale_used,
                                  num_components=cfg.model.num_components, num_classes=cfg.model.num_classes,
                                  prediction_keys=prediction_keys(cfg, ds.n_labeled))
            t_model = time.perf_counter()
            model_uri = log_model(run_id, weights_path=result.weights_path, config_yaml_path=staging / "config.yaml",
                                  data_meta=meta, input_example=result.input_example, uri=uri)
            out.phases["model"] = time.perf_counter() - t_model
            out.stdout.append(f"model_uri={model_uri}")
            model_line = f"model       {model_uri}"
            if cfg.tracking.register_model:
                version = register(model_uri, cfg.tracking.register_model, cfg.tracking.model_alias, run_id=run_id,
                                   uri=uri)
                model_line += f"  registered {cfg.tracking.register_model} v{version} @{cfg.tracking.model_alias}"
            writer.set_tags({"mixvae.model_status": "ok"})
        except Exception as exc:
            writer.set_tags({"mixvae.model_status": "failed"})
            console.error(f"training finished but model registration failed: {_failure_reason(exc)}")
            exit_code = EXIT_RUNTIME
        if model_line:
            console.print(model_line)

    # Report, from the run itself.
    if cfg.tracking.report:
        try:
            t_report = time.perf_counter()
            report_path, _ = build_report_for_run(run_id, uri, cfg.tracking.report_dir, html=cfg.tracking.html,
                                               console=console, writer=writer, final_status=status)
            out.phases["report"] = time.perf_counter() - t_report
            out.stdout.append(f"report={report_path}")
            console.print(f"report      {report_path}")
            writer.set_tags({"mixvae.report_status": "ok"})
        except Exception as exc:
            writer.set_tags({"mixvae.report_status": "failed"})
            console.error(f"training finished but the report failed: {_failure_reason(exc)}; "
                          f"retry with mixvae report {run_id}")
            exit_code = EXIT_RUNTIME
    return _close(writer, console, staging, out, status, reason, exit_code)


def build_report_for_run(run_id: str, uri: str, report_dir: str, *, html: bool, console: Console | None,
                         writer=None, final_status: str | None = None, out_dir: Path | None = None,
                         upload: bool = True) -> tuple[Path, str]:
    """The one report path: load the run from MLflow, build figures and REPORT.md, log them back.
    Returns (path of REPORT.md, full run id)."""
    from mixvae.report import build_report
    from mixvae.tracking.mlflow_run import upload_dir
    from mixvae.tracking.record import load_run

    if writer is not None:
        writer.flush()
    record = load_run(run_id, uri)
    if final_status:  # built just before the run is ended: show the status and end it will get
        record.status = final_status
        record.end_time = record.end_time or int(time.time() * 1000)
    out_dir = Path(out_dir or Path(report_dir) / record.run_id)
    started = time.perf_counter()

    def progress(done, total, name):
        if console is not None:
            console.bar(done, total, started, "plots")
    result = build_report(record, out_dir, html=html, progress=progress)
    if console is not None:
        console.end_bar()
    if upload:
        upload_dir(record.run_id, out_dir, None, uri=uri)
    return Path(result.report_md), record.run_id


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


def _close(writer, console, staging: Path, out: Outcome, status: str, reason: str | None, code: int) -> Outcome:
    (staging / "logs").mkdir(exist_ok=True)
    (staging / "logs" / "train.log").write_text(console.log_text())
    try:
        writer.log_artifact(staging / "logs" / "train.log", "logs")
    except Exception:
        pass
    ok = writer.set_status(status, reason if status != "FINISHED" else None,
                           flush_timeout=10 if status == "KILLED" else None)
    if not ok and status == "FINISHED":
        console.error(f"tracking failure: could not mark run {out.run_id} {status}: {writer.error}")
        code = EXIT_RUNTIME
    out.status = status
    out.exit_code = code
    console.debug("phases " + json.dumps({k: round(v, 3) for k, v in out.phases.items()}))
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


def _jsonable(value):
    import math

    import numpy as np
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    return value


