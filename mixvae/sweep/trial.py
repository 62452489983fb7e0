"""One trial of a sweep: sample the space, train one complete mixvae run nested under the sweep's parent,
report the metric to Optuna after every epoch (its pruner may stop the run), and tell Optuna the result.

The trial's value is the best per-epoch value of the sweep's metric over the epochs it trained (for the
early-stopping key, the value of the epoch the run restored). A pruned trial's run is kept whole: it ends
KILLED with the tag ``mixvae.pruned``, its checkpoints logged like any other run's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mixvae.sweep.space import set_item


@dataclass
class Sweep:
    """What every trial of one worker shares."""
    config: str                 # the config path or preset
    items: list[str]            # --set items given to the sweep
    shortcuts: dict[str, Any]   # --experiment-name and the like
    space: dict[str, Any]
    metric: str
    direction: str              # minimize | maximize
    pruner: str
    uri: str
    parent_id: str
    name: str                   # the parent run's name; trials are "<name>-trial-<n>"
    console: Any
    cli_uri: str | None = None
    verbose: bool = False
    report_dir: str = "reports"  # the sweep report and best_config.yaml go to <report_dir>/<parent run id>/
    child_tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TrialOutcome:
    number: int
    state: str                  # COMPLETE, PRUNED, FAIL
    value: float | None = None
    run_id: str | None = None
    reason: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False


def sample(trial, space: dict[str, Any]) -> dict[str, Any]:
    """The trial's value of every key (Optuna's suggest_* with the dotted key as the parameter name)."""
    out = {}
    for key, dim in space.items():
        if dim.type == "float":
            out[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log, step=dim.step)
        elif dim.type == "int":
            out[key] = trial.suggest_int(key, dim.low, dim.high, log=dim.log, step=dim.step)
        else:
            out[key] = trial.suggest_categorical(key, dim.choices)
    return out


class _Pruning:
    """The epoch hook: report the metric to Optuna, keep the best value, ask the pruner."""

    def __init__(self, trial, sweep: Sweep):
        self.trial, self.sweep = trial, sweep
        self.best: float | None = None
        self.pruned: str | None = None

    def __call__(self, epoch: int, logged: dict[str, float]) -> str | None:
        value = logged.get(self.sweep.metric)
        if value is None or not math.isfinite(value):
            return None
        if self.best is None or (value < self.best if self.sweep.direction == "minimize" else value > self.best):
            self.best = value
        self.trial.report(value, epoch)
        if self.sweep.pruner != "none" and self.trial.should_prune():
            self.pruned = (f"pruned by Optuna's median pruner at epoch {epoch}: {self.sweep.metric} {value:.4g} "
                           "is worse than the median of earlier trials at this epoch")
        return self.pruned


def run_trial(study, trial, sweep: Sweep) -> TrialOutcome:
    """Train the trial's run and tell Optuna how it went. Ctrl-C: the run ends KILLED, the trial FAIL."""
    from optuna.trial import TrialState

    from mixvae import run as runner
    from mixvae.config import ConfigError, load_config
    from mixvae.tracking.sweep_parent import set_tags

    params = sample(trial, sweep.space)
    out = TrialOutcome(trial.number, "FAIL", params=params)
    sweep.console.print(f"— trial {trial.number} · " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float)
                                                              else f"{k}={v}" for k, v in params.items()) + " —")
    shortcuts = {**sweep.shortcuts, "tracking.run_name": f"{sweep.name}-trial-{trial.number}"}
    tags = {**sweep.child_tags, "mixvae.sweep.parent": sweep.parent_id, "mixvae.sweep.trial": str(trial.number),
            "mixvae.sweep.state": "RUNNING"}
    hook = _Pruning(trial, sweep)
    try:
        loaded = load_config(sweep.config, [*sweep.items, *(set_item(k, v) for k, v in params.items())], shortcuts,
                             tracking_uri=sweep.cli_uri)
        outcome = runner.train(loaded, sweep.console, cli_uri=sweep.cli_uri, nested_parent_id=sweep.parent_id,
                               run_name_explicit=True, verbose=sweep.verbose, extra_tags=tags, epoch_hook=hook)
    except ConfigError as exc:
        out.reason = "the sampled values make the config invalid: " + "; ".join(exc.problems)
    except runner.UsageError as exc:
        out.reason = str(exc)
    except KeyboardInterrupt:
        out.reason, out.interrupted = "interrupted before training started", True
    else:
        out.run_id = outcome.run_id
        _judge(out, outcome, hook)
    if out.state == "COMPLETE":
        study.tell(trial, out.value)
    else:
        if out.reason:
            trial.set_user_attr("mixvae.reason", out.reason[:1000])
        study.tell(trial, state=TrialState.PRUNED if out.state == "PRUNED" else TrialState.FAIL)
    if out.run_id:
        done = {"mixvae.sweep.state": out.state}
        if out.value is not None:
            done["mixvae.sweep.value"] = repr(float(out.value))
        set_tags(sweep.uri, out.run_id, done)
    return out


def _judge(out: TrialOutcome, outcome, hook: _Pruning) -> None:
    """COMPLETE, PRUNED or FAIL from the run's outcome."""
    out.value = hook.best
    if outcome.exit_code == 130:
        out.reason, out.interrupted = "interrupted", True
    elif hook.pruned and outcome.status == "KILLED":
        out.state, out.reason = "PRUNED", hook.pruned
    elif outcome.status == "FINISHED" and hook.best is not None:
        out.state = "COMPLETE"
    elif outcome.status == "FINISHED":
        out.reason = f"the run logged no finite value of {hook.sweep.metric}"
    else:
        out.reason = f"the run ended {outcome.status}"
    if out.state == "FAIL":
        out.value = None
