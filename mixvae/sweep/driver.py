"""`mixvae sweep` as named steps: open or join the study → the shared parent run → trials until the study has
its N (or the timeout) → progress on the parent after each trial → the last worker out ends the parent and
builds the sweep report.

The parent records the best value and the best trial's params after every trial and keeps the best trial's
config as `sweep/best_config.yaml`, ready for `mixvae train -c best_config.yaml`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from mixvae import __version__, paths
from mixvae.config import Loaded, architecture_code, config_hash, load_config, to_yaml
from mixvae.sweep import space as space_lib
from mixvae.sweep.study import (StudySettings, best_trial, counts, next_trial, open_study, redacted,
                                shared_parent)
from mixvae.sweep.trial import Sweep, run_trial


@dataclass
class SweepResult:
    parent_id: str
    study: str
    exit_code: int = 0
    trial_runs: list[str] = field(default_factory=list)
    best: dict | None = None               # number, value, params, run_id
    counts: dict[str, int] = field(default_factory=dict)
    best_config: Path | None = None
    report: Path | None = None
    ended: str | None = None               # the parent's final status when this worker ended it


def default_study_name(loaded: Loaded, space: dict, metric: str) -> str:
    """Workers given the same config, space and metric join the same study without naming it."""
    digest = hashlib.sha256(f"{config_hash(loaded.config)}|{space_lib.to_yaml(space)}|{metric}".encode())
    return f"{loaded.name}-sweep-{digest.hexdigest()[:8]}"


def parent_name(loaded: Loaded) -> str:
    cfg = loaded.config
    return f"{cfg.tracking.run_name or f'{cfg.experiment.name}-{architecture_code(cfg)}'}-sweep"


def _parent_tags(loaded: Loaded, settings: StudySettings, metric: str, total: int) -> dict[str, str]:
    cfg = loaded.config
    tags = {"mixvae.kind": "sweep", "mixvae.version": __version__, "mixvae.config_name": loaded.name,
            "mixvae.architecture": architecture_code(cfg), "mixvae.sweep.study": settings.name,
            "mixvae.sweep.metric": metric, "mixvae.sweep.direction": settings.direction,
            "mixvae.sweep.trials": str(total), "mixvae.sweep.pruner": settings.pruner,
            "mixvae.sweep.storage": redacted(settings.storage), "mixvae.overrides": "; ".join(loaded.overrides)}
    tags.update(cfg.experiment.tags)
    return tags


def _create_parent(sweep: Sweep, loaded: Loaded, settings: StudySettings, total: int, attach: str | None,
                   experiment_from_cli: bool) -> str:
    """The parent run with its tags and params, the space and the base config as artifacts."""
    from mixvae.tracking.sweep_parent import create_parent, log_file
    params = {"sweep.trials": str(total), "sweep.metric": sweep.metric, "sweep.direction": settings.direction,
              "sweep.pruner": settings.pruner, "sweep.study": settings.name, "sweep.config": loaded.name}
    parent = create_parent(sweep.uri, experiment_name=loaded.config.tracking.experiment_name,
                           experiment_from_cli=experiment_from_cli, run_name=sweep.name,
                           tags=_parent_tags(loaded, settings, sweep.metric, total), params=params,
                           attach_run_id=attach)
    staging = _staging(parent)
    (staging / "space.yaml").write_text(space_lib.to_yaml(sweep.space))
    (staging / "base_config.yaml").write_text(to_yaml(loaded.config))
    for name in ("space.yaml", "base_config.yaml"):
        log_file(sweep.uri, parent, staging / name)
    return parent


def _staging(parent_id: str) -> Path:
    out = paths.checkpoints_dir(parent_id) / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    return out


def run_sweep(sweep: Sweep, loaded: Loaded, settings: StudySettings, total: int, timeout: float | None, *,
              attach: str | None = None, experiment_from_cli: bool = False) -> SweepResult:
    """This worker's part of the sweep. ``sweep.parent_id`` is filled in here."""
    from mixvae.tracking.sweep_parent import parent_status, reopen
    study = open_study(settings)
    deadline = time.monotonic() + timeout if timeout else None
    trial = next_trial(study, total, deadline)
    sweep.parent_id = shared_parent(study, trial, lambda: _create_parent(
        sweep, loaded, settings, total, attach, experiment_from_cli))
    result = SweepResult(sweep.parent_id, settings.name)
    if trial is not None and parent_status(sweep.uri, sweep.parent_id) != "RUNNING":
        reopen(sweep.uri, sweep.parent_id)
    interrupted = False
    try:
        while trial is not None:
            out = run_trial(study, trial, sweep)
            trial = None  # told: nothing of it is left to clean up
            if out.run_id:
                result.trial_runs.append(out.run_id)
            _after_trial(study, sweep, out)
            if out.interrupted:
                interrupted = True
                break
            trial = next_trial(study, total, deadline)
    except KeyboardInterrupt:  # between trials (inside one, the run itself ends KILLED)
        interrupted = True
        _abandon(study, trial)
    _finish(study, sweep, result, interrupted)
    return result


def _abandon(study, trial) -> None:
    """A trial asked for but not yet told (Ctrl-C came first) is told FAIL, so the study does not wait on it."""
    if trial is None:
        return
    from optuna.trial import TrialState
    try:
        trial.set_user_attr("mixvae.reason", "interrupted before its run started")
        study.tell(trial, state=TrialState.FAIL)
    except Exception:  # told already, or the storage is gone: nothing more to do
        pass


def _after_trial(study, sweep: Sweep, out) -> None:
    """Counts and the best so far on the parent; the best trial's config when the best changed."""
    from mixvae.tracking.sweep_parent import record_progress
    n = counts(study)
    best = best_trial(study)
    metrics = {f"sweep.n_{k}": float(v) for k, v in n.items() if k != "running"}
    tags = {}
    if best is not None:
        metrics["sweep.best_value"] = float(best.value)
        tags = {"mixvae.sweep.best_trial": str(best.number),
                **{f"mixvae.sweep.best.{k}": str(v) for k, v in best.params.items()}}
        if best.number == out.number:
            tags["mixvae.sweep.best_run_id"] = out.run_id or ""
            _write_best_config(sweep, best.params)
    record_progress(sweep.uri, sweep.parent_id, metrics, tags, step=n["complete"] + n["pruned"] + n["failed"])
    value = "–" if out.value is None else f"{out.value:.4g}"
    best_text = f"best {best.value:.4g} (trial {best.number})" if best is not None else "no complete trial yet"
    why = f" — {out.reason}" if out.reason and out.state != "COMPLETE" else ""
    sweep.console.print(f"trial {out.number} {out.state} {sweep.metric}={value} · {best_text}{why}")


def _write_best_config(sweep: Sweep, params: dict) -> Path:
    """The resolved config of the best trial, as the parent's `sweep/best_config.yaml`."""
    from mixvae.tracking.sweep_parent import log_file
    items = [*sweep.items, *(space_lib.set_item(k, v) for k, v in params.items())]
    loaded = load_config(sweep.config, items, {k: v for k, v in sweep.shortcuts.items()
                                               if not k.startswith("tracking.")}, tracking_uri=sweep.cli_uri)
    path = paths.under_work_dir(sweep.report_dir) / sweep.parent_id / "best_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# The best trial of sweep {sweep.parent_id} ({sweep.metric}); train it with:\n"
              "#   mixvae train -c best_config.yaml\n")
    path.write_text(header + to_yaml(loaded.config))
    log_file(sweep.uri, sweep.parent_id, path)
    return path


def _finish(study, sweep: Sweep, result: SweepResult, interrupted: bool) -> None:
    """The result of the study so far; the last worker out ends the parent and builds the report."""
    result.counts = counts(study)
    best = best_trial(study)
    if best is not None:
        result.best = {"number": best.number, "value": best.value, "params": dict(best.params)}
        result.best_config = _write_best_config(sweep, best.params)
    result.exit_code = 130 if interrupted else (1 if best is None else 0)
    if result.counts["running"] > 0:  # other workers still train: the last of them ends the parent
        return
    from mixvae.tracking.sweep_parent import end_parent
    if interrupted:
        status, reason = "KILLED", "interrupted"
    elif best is None:
        status, reason = "FAILED", "no trial completed"
    else:
        status, reason = "FINISHED", None
    result.report = _report(sweep, status)
    end_parent(sweep.uri, sweep.parent_id, status, reason)
    result.ended = status


def _report(sweep: Sweep, status: str) -> Path | None:
    """The sweep report, built from the parent run alone (as `mixvae report PARENT_ID` would), showing the
    status the parent is about to end with."""
    from mixvae.reporting import build_sweep_report_for_run
    try:
        return build_sweep_report_for_run(sweep.parent_id, sweep.uri, sweep.report_dir, html=True, out_dir=None,
                                          upload=True, final_status=status)
    except Exception as exc:  # the trials are complete runs; the report can be rebuilt later
        sweep.console.error(f"the sweep report failed: {type(exc).__name__}: {exc}; "
                            f"retry with mixvae report {sweep.parent_id}")
        return None
