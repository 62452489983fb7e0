"""The MLflow side of `mixvae sweep`: the parent run that every worker's trial runs nest under, and what it
records (the space, progress after each trial, the best trial and its config, its end).

The parent is written through the client, not as this thread's active run: several worker processes
update it, and each trial run is opened as a child of it (`mlflow.start_run(parent_run_id=…)`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag

from mixvae.tracking.connection import connect, short_reason
from mixvae.tracking.mlflow_run import experiment_named, mark_model_training
from mixvae.tracking.writer import RunNotFound, TrackingError

STATUS_REASON_TAG = "mixvae.status_reason"


def _experiment_id(client, name: str, from_cli: bool, uri: str) -> str:
    """--experiment-name, else MLflow's variables, else the config's experiment (created when missing)."""
    if not from_cli:
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
            return experiment_named(client, os.environ["MLFLOW_EXPERIMENT_NAME"], uri)
    return experiment_named(client, name, uri)


def create_parent(uri: str, *, experiment_name: str, experiment_from_cli: bool, run_name: str,
                  tags: dict[str, str], params: dict[str, str], attach_run_id: str | None = None) -> str:
    """A new parent run (or ``attach_run_id``, the run `mlflow run` made for the entry point) with its tags
    and params. → its run id. Raises TrackingError."""
    client = connect(uri)
    try:
        if attach_run_id:
            run_id = client.get_run(attach_run_id).info.run_id
        else:
            experiment_id = _experiment_id(client, experiment_name, experiment_from_cli, uri)
            run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag(k, str(v)) for k, v in tags.items()])
        mark_model_training(client, client.get_experiment(client.get_run(run_id).info.experiment_id))
        return run_id
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"could not create the sweep's parent run at {uri}: {short_reason(exc)}") from exc


def parent_status(uri: str, run_id: str) -> str:
    """RUNNING, FINISHED, FAILED or KILLED; RunNotFound when the run is gone."""
    client = connect(uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise RunNotFound(f"the sweep's parent run {run_id} was not found at {uri}: {short_reason(exc)}") from exc
    if run.info.lifecycle_stage == "deleted":
        raise RunNotFound(f"the sweep's parent run {run_id} is deleted")
    return run.info.status


def reopen(uri: str, run_id: str) -> None:
    """A finished parent whose study gets more trials runs again."""
    connect(uri).update_run(run_id, status="RUNNING")


def log_file(uri: str, run_id: str, path: Path, artifact_dir: str = "sweep") -> None:
    connect(uri).log_artifact(run_id, str(path), artifact_dir)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    connect(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def record_progress(uri: str, run_id: str, metrics: dict[str, float], tags: dict[str, str], step: int) -> None:
    """After a trial: counts and the best value so far (step = trials finished), the best trial's tags."""
    now = int(time.time() * 1000)
    connect(uri).log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
                           tags=[RunTag(k, str(v)) for k, v in tags.items()])


def end_parent(uri: str, run_id: str, status: str, reason: str | None = None) -> None:
    client = connect(uri)
    if reason:
        client.set_tag(run_id, STATUS_REASON_TAG, reason[:5000])
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.from_string(status)))
