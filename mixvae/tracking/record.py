"""Reading a run back from MLflow: `load_run(run id or prefix) -> RunRecord`.

The report is built from a RunRecord only, never from in-memory training objects. Missing
artifacts are None, never an exception: a FAILED or KILLED run still gives a record.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

from mixvae.tracking.connection import connect, short_reason
from mixvae.tracking_uri import resolve_tracking_uri
from mixvae.tracking.writer import RunNotFound, TrackingError

log = logging.getLogger(__name__)

RUN_ID_LENGTH = 32
MIN_PREFIX_LENGTH = 8
_HEX = re.compile(r"[0-9a-f]+")


@dataclass
class RunRecord:
    run_id: str
    run_name: str
    experiment_name: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING
    start_time: int | None  # ms since epoch
    end_time: int | None
    tags: dict[str, str]
    params: dict[str, str]
    config: dict | None  # parsed config.yaml (resolved, nested)
    summary: dict | None  # parsed summary.json
    metrics: dict[str, float]  # bare summary keys only
    histories: dict[str, list[tuple[int, float]]]  # "train/loss.total" -> [(epoch, value)]
    diagnostics: dict[str, np.ndarray] | None  # diagnostics/eval.npz
    history_arrays: dict[str, np.ndarray] | None  # diagnostics/history.npz
    events: list[dict] | None  # curriculum/events.json
    artifacts: list[tuple[str, int]] = field(default_factory=list)  # (path, size) of every file
    model_uri: str | None = None

    def has_artifact(self, path: str) -> bool:
        return any(p == path for p, _ in self.artifacts)

    @property
    def duration_ms(self) -> int | None:
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time


# ---------------------------------------------------------------------------------------------
# Run ids


def all_experiments(client: MlflowClient, view_type: int = ViewType.ALL) -> list:
    experiments: list = []
    page_token = None
    while True:
        page = client.search_experiments(view_type=view_type, page_token=page_token)
        experiments.extend(page)
        page_token = page.token
        if not page_token:
            return experiments


def all_experiment_ids(client: MlflowClient) -> list[str]:
    return [e.experiment_id for e in all_experiments(client)]


def _no_match(text: str) -> RunNotFound:
    return RunNotFound(
        f"no run matches '{text}' (give a full 32-hex run id or a unique prefix of at least "
        f"{MIN_PREFIX_LENGTH} characters)"
    )


def resolve_run_id(client: MlflowClient, run_id_or_prefix: str) -> str:
    """The full run id for a full id or a unique prefix of ≥ 8 hex characters, searched across
    all experiments. Raises RunNotFound naming the candidates when the prefix is ambiguous."""
    text = run_id_or_prefix.strip()
    prefix = text.lower()
    if len(prefix) < MIN_PREFIX_LENGTH or len(prefix) > RUN_ID_LENGTH or not _HEX.fullmatch(prefix):
        raise _no_match(text)
    if len(prefix) == RUN_ID_LENGTH:
        try:
            return client.get_run(prefix).info.run_id
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise _no_match(text) from exc
            raise
    matches = client.search_runs(
        all_experiment_ids(client),
        filter_string=f"attributes.run_id LIKE '{prefix}%'",
        run_view_type=ViewType.ALL,
        max_results=20,
    )
    if not matches:
        raise _no_match(text)
    if len(matches) > 1:
        lines = "\n".join(
            f"  {r.info.run_id}  {r.info.run_name}  ({r.info.status})" for r in matches
        )
        raise RunNotFound(f"run id prefix '{text}' is ambiguous; it matches:\n{lines}")
    return matches[0].info.run_id


# ---------------------------------------------------------------------------------------------
# Reading


def run_artifact_repository(client: MlflowClient, run):
    """The store holding `run`'s artifacts, asked directly. Through the run id (`client.list_artifacts`,
    `client.download_artifacts`) MLflow looks the run up again and searches its logged models on
    every call; a logged model is never among a run's artifacts here."""
    uri = client.tracking_uri
    return get_artifact_repository(add_databricks_profile_info_to_artifact_uri(run.info.artifact_uri, uri),
                                   tracking_uri=uri)


def artifact_tree(client: MlflowClient, run_id: str, path: str | None = None, *,
                  repo=None) -> list[tuple[str, int]]:
    """(path, size) of every artifact file, depth first, sorted by path."""
    repo = repo or run_artifact_repository(client, client.get_run(run_id))
    files: list[tuple[str, int]] = []
    for info in repo.list_artifacts(path):
        if info.is_dir:
            files.extend(artifact_tree(client, run_id, info.path, repo=repo))
        else:
            files.append((info.path, int(info.file_size or 0)))
    return sorted(files)


def latest_per_step(history) -> list[tuple[int, float]]:
    """[(step, value)] sorted by step; for a step logged more than once the value with the latest
    timestamp wins (a resumed run logs some epochs again)."""
    best: dict[int, tuple[int, int, float]] = {}
    for order, metric in enumerate(history):
        candidate = (metric.timestamp, order, metric.value)
        if metric.step not in best or candidate[:2] > best[metric.step][:2]:
            best[metric.step] = candidate
    return [(step, float(best[step][2])) for step in sorted(best)]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: np.array(data[name]) for name in data.files}


def _read_json(path: Path):
    return json.loads(path.read_text())


def _read_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def _read_events(path: Path) -> list[dict]:
    data = _read_json(path)
    return list(data["events"]) if isinstance(data, dict) else list(data)


READERS = {
    "config.yaml": _read_yaml,
    "summary.json": _read_json,
    "diagnostics/eval.npz": _read_npz,
    "diagnostics/history.npz": _read_npz,
    "curriculum/events.json": _read_events,
}


def _parse(path: str, local: Path, read):
    """A damaged artifact reads as missing (None); the report then says what it skipped."""
    try:
        return read(local)
    except (ValueError, KeyError, TypeError, OSError, yaml.YAMLError, zipfile.BadZipFile) as exc:
        log.warning("could not read artifact %s: %s", path, exc)
        return None


def _model_uri(client: MlflowClient, run) -> str | None:
    """The LoggedModel linked to the run (`models:/m-<id>`), the last one when several."""
    outputs = getattr(run, "outputs", None)
    model_outputs = list(getattr(outputs, "model_outputs", None) or [])
    if model_outputs:
        return f"models:/{model_outputs[-1].model_id}"
    try:
        models = client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
    except MlflowException:
        return None
    models = sorted(models, key=lambda m: m.creation_timestamp or 0)
    return f"models:/{models[-1].model_id}" if models else None


def load_run(run_id_or_prefix: str, uri: str | None = None) -> RunRecord:
    """Everything the report needs from one run. Raises RunNotFound (unknown or ambiguous id) or
    TrackingError (store unreachable or failing)."""
    uri = uri or resolve_tracking_uri(None, None)[0]
    client = connect(uri)
    try:
        run_id = resolve_run_id(client, run_id_or_prefix)
        run = client.get_run(run_id)
        experiment_name = client.get_experiment(run.info.experiment_id).name
        repo = run_artifact_repository(client, run)
        artifacts = artifact_tree(client, run_id, repo=repo)
        present = {path for path, _ in artifacts}
        contents: dict[str, object] = {}
        with tempfile.TemporaryDirectory(prefix="mixvae-run-") as tmp:
            for path, read in READERS.items():
                if path in present:
                    local = Path(repo.download_artifacts(path, tmp))
                    contents[path] = _parse(path, local, read)
        history_keys = sorted(k for k in run.data.metrics if "/" in k)
        with ThreadPoolExecutor(max_workers=8) as pool:
            fetched = pool.map(lambda k: client.get_metric_history(run_id, k), history_keys)
            histories = {k: latest_per_step(h) for k, h in zip(history_keys, fetched, strict=True)}
        model_uri = _model_uri(client, run)
    except RunNotFound:
        raise
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"could not read run {run_id_or_prefix} at {uri}: {short_reason(exc)}") from exc
    return RunRecord(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        experiment_name=experiment_name,
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        tags=dict(run.data.tags),
        params=dict(run.data.params),
        config=contents.get("config.yaml"),
        summary=contents.get("summary.json"),
        metrics={k: float(v) for k, v in run.data.metrics.items() if "/" not in k},
        histories=histories,
        diagnostics=contents.get("diagnostics/eval.npz"),
        history_arrays=contents.get("diagnostics/history.npz"),
        events=contents.get("curriculum/events.json"),
        artifacts=artifacts,
        model_uri=model_uri,
    )
