"""Reading a sweep back from MLflow: `load_sweep(parent run id) -> SweepRecord`.

A sweep is one parent run (tag `mixvae.kind=sweep`) with one nested training run per trial. Everything
the sweep report needs comes from those runs: the parent's tags, metrics and `sweep/space.yaml`, and for
every child its trial number, state and value (tags `mixvae.sweep.*`), the swept keys' values (its
params, typed back by the space) and the per-epoch history of the sweep's metric (what the pruner saw).
Nothing is read from Optuna's storage, so a report can be rebuilt where only the tracking store is.
"""

from __future__ import annotations

import json
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException

from mixvae.tracking.connection import connect, short_reason
from mixvae.tracking.record import all_experiment_ids, artifact_tree, latest_per_step, resolve_run_id
from mixvae.tracking.writer import STATUS_REASON_TAG, RunNotFound, TrackingError
from mixvae.tracking_uri import resolve_tracking_uri

SPACE_ARTIFACT = "sweep/space.yaml"
BEST_CONFIG_ARTIFACT = "sweep/best_config.yaml"
TRIAL_STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
PAGE_SIZE = 500


@dataclass
class SpaceDim:
    """One swept key's distribution, as `sweep/space.yaml` holds it."""
    type: str                           # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list | None = None


@dataclass
class TrialRecord:
    number: int
    run_id: str
    run_name: str
    status: str                         # the run's MLflow status: RUNNING, FINISHED, FAILED, KILLED
    state: str                          # the trial's: COMPLETE, PRUNED, FAIL, RUNNING
    value: float | None                 # the objective value (None for FAIL and RUNNING)
    params: dict[str, Any]              # swept key -> value typed by the space
    intermediate_values: dict[int, float]   # epoch -> the sweep metric at that epoch
    start_time: int | None              # ms since epoch
    end_time: int | None
    epochs: int | None = None           # epochs trained
    reason: str | None = None           # why the run ended as it did (pruned, failed)
    unparsed: dict[str, str] = field(default_factory=dict)  # swept keys whose logged value fits no choice

    @property
    def duration_ms(self) -> int | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time


@dataclass
class SweepRecord:
    run_id: str
    run_name: str
    experiment_name: str
    status: str
    start_time: int | None
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]           # sweep.best_value, sweep.n_complete, … (latest values)
    space: dict[str, SpaceDim]          # empty when sweep/space.yaml is missing or unreadable
    trials: list[TrialRecord]           # sorted by trial number
    artifacts: list[tuple[str, int]] = field(default_factory=list)
    space_problem: str | None = None    # why the space is empty

    def tag(self, name: str, default: str | None = None) -> str | None:
        return self.tags.get(f"mixvae.sweep.{name}", default)

    @property
    def metric(self) -> str:
        return self.tag("metric", "") or ""

    @property
    def direction(self) -> str:
        return self.tag("direction", "minimize") or "minimize"

    @property
    def requested(self) -> int | None:
        text = self.tag("trials")
        return int(text) if text and text.isdigit() else None

    def has_artifact(self, path: str) -> bool:
        return any(p == path for p, _ in self.artifacts)

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def best(self) -> TrialRecord | None:
        """The best complete trial in the sweep's direction (the lowest number on ties)."""
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
        if not done:
            return None
        sign = -1.0 if self.direction == "maximize" else 1.0
        return min(done, key=lambda t: (sign * t.value, t.number))


# ---------------------------------------------------------------------------------------------
# Values


def parse_space(raw: Any) -> dict[str, SpaceDim]:
    """`sweep/space.yaml` as {key: SpaceDim}; ValueError when it is not a mapping of distributions."""
    if not isinstance(raw, dict):
        raise ValueError("expected a mapping of dotted config keys to distributions")
    out = {}
    for key, spec in raw.items():
        if not isinstance(spec, dict) or spec.get("type") not in ("float", "int", "categorical"):
            raise ValueError(f"{key}: not a float, int or categorical distribution")
        if spec["type"] == "categorical":
            out[str(key)] = SpaceDim("categorical", choices=list(spec.get("choices") or []))
        else:
            out[str(key)] = SpaceDim(spec["type"], low=spec.get("low"), high=spec.get("high"),
                                     log=bool(spec.get("log", False)), step=spec.get("step"))
    return out


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def _choice(text: str, choices: list) -> tuple[bool, Any]:
    """The choice whose logged form is ``text``: mixvae logs JSON text, other writers str()."""
    for choice in choices:
        if text == json.dumps(choice):
            return True, choice
    for choice in choices:
        if text == str(choice) or (choice is None and text in ("None", "null", "")):
            return True, choice
    return False, None


def typed_value(text: str, dim: SpaceDim | None) -> tuple[bool, Any]:
    """A param as logged (a string) back to the space's type → (ok, value)."""
    if dim is None:
        return True, _json(text)
    if dim.type == "categorical":
        return _choice(text, dim.choices or [])
    value = _json(text)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False, None
    if dim.type == "int":
        return (True, int(number)) if number.is_integer() else (False, None)
    return math.isfinite(number), number


def _float_tag(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def trial_state(tags: dict[str, str], status: str) -> str:
    """The trial's state: the child's `mixvae.sweep.state` tag, else read from how its run ended."""
    state = tags.get("mixvae.sweep.state")
    if state in TRIAL_STATES:
        return state
    if status == "RUNNING":
        return "RUNNING"
    if tags.get("mixvae.pruned") == "true":
        return "PRUNED"
    if status == "FINISHED" and _float_tag(tags.get("mixvae.sweep.value")) is not None:
        return "COMPLETE"
    return "FAIL"


# ---------------------------------------------------------------------------------------------
# Reading


def _children(client: MlflowClient, parent_id: str) -> list:
    """Every live run nested under the parent, in any experiment, page after page."""
    runs, token = [], None
    experiments = all_experiment_ids(client)
    while True:
        page = client.search_runs(experiments, filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _read_space(client: MlflowClient, run_id: str, present: set[str]) -> tuple[dict[str, SpaceDim], str | None]:
    if SPACE_ARTIFACT not in present:
        return {}, f"the parent run has no {SPACE_ARTIFACT}"
    with tempfile.TemporaryDirectory(prefix="mixvae-sweep-") as tmp:
        local = Path(client.download_artifacts(run_id, SPACE_ARTIFACT, tmp))
        try:
            return parse_space(yaml.safe_load(local.read_text())), None
        except (ValueError, yaml.YAMLError) as exc:
            return {}, f"{SPACE_ARTIFACT} could not be read: {exc}"


def _trial(run, space: dict[str, SpaceDim], keys: list[str], history: list) -> TrialRecord:
    tags, info = run.data.tags, run.info
    state = trial_state(tags, info.status)
    params, unparsed = {}, {}
    for key in keys:
        if key not in run.data.params:
            continue
        ok, value = typed_value(run.data.params[key], space.get(key))
        if ok:
            params[key] = value
        else:
            unparsed[key] = run.data.params[key]
    intermediate = dict(latest_per_step(history))
    epochs = run.data.metrics.get("training.epochs_completed")
    if epochs is None and intermediate:
        epochs = max(intermediate)
    value = _float_tag(tags.get("mixvae.sweep.value")) if state not in ("FAIL", "RUNNING") else None
    return TrialRecord(number=int(tags["mixvae.sweep.trial"]), run_id=info.run_id, run_name=info.run_name or "",
                       status=info.status, state=state, value=value, params=params,
                       intermediate_values=intermediate, start_time=info.start_time, end_time=info.end_time,
                       epochs=None if epochs is None else int(epochs), reason=tags.get(STATUS_REASON_TAG),
                       unparsed=unparsed)


def _trials(client: MlflowClient, parent_id: str, metric: str, space: dict[str, SpaceDim],
            keys: list[str]) -> list[TrialRecord]:
    children = [r for r in _children(client, parent_id)
                if str(r.data.tags.get("mixvae.sweep.trial", "")).isdigit()]
    with ThreadPoolExecutor(max_workers=8) as pool:
        histories = list(pool.map(lambda r: client.get_metric_history(r.info.run_id, metric) if metric else [],
                                  children))
    trials = [_trial(run, space, keys, history) for run, history in zip(children, histories, strict=True)]
    return sorted(trials, key=lambda t: (t.number, t.start_time or 0))


def sweep_parent_id(run_id_or_prefix: str, uri: str | None = None) -> str | None:
    """The full run id when the run is a sweep's parent (tag `mixvae.kind=sweep`), else None.
    Raises RunNotFound or TrackingError like `load_run`."""
    uri = uri or resolve_tracking_uri(None, None)[0]
    client = connect(uri)
    try:
        run = client.get_run(resolve_run_id(client, run_id_or_prefix))
    except RunNotFound:
        raise
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"could not read run {run_id_or_prefix} at {uri}: {short_reason(exc)}") from exc
    return run.info.run_id if run.data.tags.get("mixvae.kind") == "sweep" else None


def load_sweep(parent_run_id: str, uri: str | None = None) -> SweepRecord:
    """Everything the sweep report needs from a parent run and its children. Raises RunNotFound (unknown
    or ambiguous id, or a run that is not a sweep's parent) or TrackingError (store unreachable or failing)."""
    uri = uri or resolve_tracking_uri(None, None)[0]
    client = connect(uri)
    try:
        run_id = resolve_run_id(client, parent_run_id)
        run = client.get_run(run_id)
        tags = dict(run.data.tags)
        if tags.get("mixvae.kind") != "sweep":
            raise RunNotFound(f"run {run_id} is not a sweep's parent run (its tag mixvae.kind is "
                              f"{tags.get('mixvae.kind') or 'missing'})")
        experiment_name = client.get_experiment(run.info.experiment_id).name
        artifacts = artifact_tree(client, run_id)
        space, problem = _read_space(client, run_id, {p for p, _ in artifacts})
        keys = list(space) or sorted(k.removeprefix("mixvae.sweep.best.") for k in tags
                                     if k.startswith("mixvae.sweep.best."))
        trials = _trials(client, run_id, tags.get("mixvae.sweep.metric", ""), space, keys)
    except RunNotFound:
        raise
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"could not read sweep {parent_run_id} at {uri}: {short_reason(exc)}") from exc
    return SweepRecord(run_id=run_id, run_name=run.info.run_name or "", experiment_name=experiment_name,
                       status=run.info.status, start_time=run.info.start_time, end_time=run.info.end_time,
                       tags=tags, params=dict(run.data.params),
                       metrics={k: float(v) for k, v in run.data.metrics.items()}, space=space, trials=trials,
                       artifacts=artifacts, space_problem=problem)
