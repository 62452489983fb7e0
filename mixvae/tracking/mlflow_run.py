"""Opening an MLflow run for training: `open_run` creates or attaches to a run and returns its
`MlflowWriter` (mlflow_writer.py), whose `set_status` ends the run.

Runs are started with `mlflow.start_run`, so MLflow's own rules apply: its source tags, system
metrics, `MLFLOW_RUN_ID` (as set by `mlflow run`: attach to that run, used once) and, when neither
`--experiment-name` nor a run to attach to is given, its experiment precedence
(`MLFLOW_EXPERIMENT_NAME`, then `MLFLOW_EXPERIMENT_ID`). mixvae adds only what MLflow has no rule
for: `tracking.experiment_name` from the config when no variable names an experiment.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mixvae.paths import default_store_uri, work_dir
from mixvae.tracking.artifacts import upload_dir  # noqa: F401  (mixvae.run imports it from here)
from mixvae.tracking.connection import connect, short_reason, sign_in_problem
from mixvae.tracking.mlflow_writer import DEFAULT_OUTAGE_TOLERANCE_S, MlflowWriter
from mixvae.tracking.ownership import owner_tags
from mixvae.tracking.writer import TrackingError

EXPERIMENT_VARIABLES = ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
# MLflow's UI opens an experiment in the view its kind tag names; without one, an experiment of plain runs
# may open in the GenAI view (evaluation runs, traces, prompts). mixvae's are model training.
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment keeps its artifacts: MLflow's choice (None), except in the working
    directory's default store, whose artifacts go beside it in `<working dir>/mlruns/<name>` (MLflow
    would use `./mlruns` of whatever directory the command runs in)."""
    if uri != default_store_uri():
        return None
    return (work_dir() / "mlruns" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)).as_uri()


def mark_model_training(client: MlflowClient, experiment) -> None:
    """Tag ``experiment`` as model training for MLflow's UI, unless it already has a kind (a user's choice,
    or MLflow's own, stays). Best effort: a server that refuses the tag loses nothing but the view."""
    if EXPERIMENT_KIND_TAG in (experiment.tags or {}):
        return
    with contextlib.suppress(Exception):
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def experiment_named(client: MlflowClient, name: str, uri: str = "") -> str:
    """The id of the experiment called `name`, created when missing; a deleted one is refused."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location(uri, name),
                                            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by someone else
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment '{name}' is deleted; restore it with `mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}` or choose another experiment name"
        )
    return experiment.experiment_id


def experiment_for_new_run(client: MlflowClient, name: str, from_cli: bool,
                           nested_parent_id: str | None, uri: str = "") -> str | None:
    """The experiment id to create a run in: the parent's for a child run, `--experiment-name`'s,
    None to let MLflow read `MLFLOW_EXPERIMENT_NAME` / `MLFLOW_EXPERIMENT_ID`, else the config's
    `tracking.experiment_name` (created when missing)."""
    if nested_parent_id:  # children live in their parent's experiment
        return client.get_run(nested_parent_id).info.experiment_id
    if not from_cli and any(os.environ.get(variable) for variable in EXPERIMENT_VARIABLES):
        return None
    return experiment_named(client, name, uri)


def open_run(
    *,
    uri: str,
    experiment_name: str = "mixvae",
    run_name: str | None = None,
    run_name_explicit: bool = False,
    experiment_from_cli: bool = False,
    resume_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    nested_parent_id: str | None = None,
    log_system_metrics: bool = False,
    outage_tolerance: float = DEFAULT_OUTAGE_TOLERANCE_S,
) -> MlflowWriter:
    """Create a run, or attach to one, and return its writer (status RUNNING).

    - `resume_run_id`: reopen that run (status back to RUNNING).
    - else `MLFLOW_RUN_ID` set (as by `mlflow run`): MLflow attaches to that run; no experiment is
      chosen or created. The run keeps its name unless `run_name_explicit`.
    - else a new run named `run_name`: nested under `nested_parent_id` in the parent's experiment
      when given, else in the experiment chosen by `experiment_for_new_run`.
    The run's tags name this process as its owner (ownership.py), also when it is reopened.
    `outage_tolerance` is how long the writer's end waits for a store that stopped answering.
    Raises TrackingError when the store cannot be reached or the run cannot be opened.
    """
    client = connect(uri)
    mlflow.set_tracking_uri(uri)
    # every run records the process that holds it, so that a hard kill can be told from a live run
    tags = {**owner_tags(), **{str(k): str(v) for k, v in (tags or {}).items()}}
    attach_id = resume_run_id or os.environ.get("MLFLOW_RUN_ID") or None
    try:
        if attach_id:
            # start_run reads MLFLOW_RUN_ID itself and removes it: runs opened later in this
            # process, e.g. the children of a seed group, are new runs.
            active = mlflow.start_run(run_id=resume_run_id, run_name=run_name if run_name_explicit else None,
                                      tags=tags, description=description,
                                      log_system_metrics=log_system_metrics)
        else:
            experiment_id = experiment_for_new_run(client, experiment_name, experiment_from_cli,
                                                   nested_parent_id, uri)
            active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                                      nested=nested_parent_id is not None, parent_run_id=nested_parent_id,
                                      tags=tags, description=description,
                                      log_system_metrics=log_system_metrics)
        experiment = client.get_experiment(active.info.experiment_id)
        experiment_name = experiment.name
        mark_model_training(client, experiment)  # also one MLflow made (MLFLOW_EXPERIMENT_NAME, `mlflow run`)
    except TrackingError:
        raise
    except Exception as exc:
        what = f"run {attach_id}" if attach_id else "a run"
        raise TrackingError(sign_in_problem(exc, uri, f"open {what}")
                            or f"could not open {what} at {uri}: {short_reason(exc)}") from exc
    return MlflowWriter(client, run_id=active.info.run_id, run_name=active.info.run_name,
                        experiment_id=active.info.experiment_id, experiment_name=experiment_name,
                        artifact_uri=active.info.artifact_uri, uri=uri, attached=bool(attach_id),
                        outage_tolerance=outage_tolerance)
