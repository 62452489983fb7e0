"""MLflow runs: opening, the background writer, and ending.

`open_run` creates or attaches to a run with `mlflow.start_run` (so MLflow's own source tags,
`MLFLOW_RUN_ID` and system metrics behave as MLflow documents them) and returns an `MlflowWriter`.
The writer's background thread makes every MLflow call of the training loop; the loop only puts
items on a queue. `set_status` ends the run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mixvae.tracking_uri import check_uri, resolve_tracking_uri
from mixvae.tracking.writer import (
    STATUS_REASON_TAG,
    TrackingError,
    as_float_metrics,
    check_param_keys,
    check_status,
    join_artifact_path,
    normalise_records,
)

log = logging.getLogger(__name__)

RETRIES = 3  # a failing call is retried 3 times
BACKOFF_SECONDS = 1.0  # waits 1 s, 2 s, 4 s between the attempts
FIRST_CONTACT_TIMEOUT_S = 5  # an unreachable store must fail fast, before training starts

# MLflow's own HTTP retries (7, with backoff of up to minutes) would multiply with the writer's;
# mixvae lowers them unless the user set them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


# ---------------------------------------------------------------------------------------------
# Process-wide preparation


def prepare_mlflow() -> None:
    """What mixvae sets for its own process: no "View run" lines on stdout, no
    MLflow/SQLAlchemy deprecation warnings on the console, no alembic migration chatter."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    for module in (r"mlflow(\..*)?", r"sqlalchemy(\..*)?", r"alembic(\..*)?"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    for name in ("alembic", "mlflow.store.db.utils"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def first_contact_settings() -> Iterator[None]:
    """No HTTP retries and a short timeout while we only ask "is anybody there?"."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(FIRST_CONTACT_TIMEOUT_S)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def short_reason(exc: BaseException, limit: int = 400) -> str:
    """One line naming the exception, for `tracking ... : <reason>` messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MlflowException) and not text.startswith(exc.error_code):
        text = f"{exc.error_code}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def connect(uri: str) -> MlflowClient:
    """A client for `uri`, after checking quickly that the store answers.

    Raises TrackingError("tracking store not reachable at <uri>: <reason>") otherwise."""
    problem = check_uri(uri)
    if problem:
        raise TrackingError(problem)
    prepare_mlflow()
    with first_contact_settings():
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as exc:  # any failure here means "cannot use this store"
            raise TrackingError(f"tracking store not reachable at {uri}: {short_reason(exc)}") from exc
    return client


def with_retries(
    what: str, call: Callable[[], Any], retries: int = RETRIES, backoff: float = BACKOFF_SECONDS
) -> tuple[Any, str | None]:
    """Run `call`; on failure retry `retries` times, waiting backoff·2^i. Returns (result, None)
    or (None, reason)."""
    for attempt in range(retries + 1):
        try:
            return call(), None
        except Exception as exc:
            if attempt == retries:
                return None, f"{what} failed after {retries} retries: {short_reason(exc)}"
            log.debug("%s failed (attempt %d): %s", what, attempt + 1, exc)
            time.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Experiments and runs


def resolve_experiment(client: MlflowClient, name: str, from_cli: bool) -> tuple[str, str]:
    """(experiment id, name): `--experiment-name` → `MLFLOW_EXPERIMENT_NAME` or
    `MLFLOW_EXPERIMENT_ID` → `tracking.experiment_name`; created when missing."""
    if not from_cli:
        env_name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        env_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
        if env_name:
            name = env_name
        elif env_id:
            try:
                experiment = client.get_experiment(env_id)
            except MlflowException as exc:
                raise TrackingError(
                    f"MLFLOW_EXPERIMENT_ID={env_id} names no experiment: {short_reason(exc)}"
                ) from exc
            return experiment.experiment_id, experiment.name
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name), name
        except MlflowException:
            experiment = client.get_experiment_by_name(name)  # created meanwhile by someone else
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        raise TrackingError(
            f"experiment '{name}' is deleted; restore it with `mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}` or choose another experiment name"
        )
    return experiment.experiment_id, experiment.name


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
    retries: int = RETRIES,
    backoff: float = BACKOFF_SECONDS,
) -> MlflowWriter:
    """Create a run, or attach to one, and return its writer (status RUNNING).

    - `resume_run_id`: reopen that run (status back to RUNNING).
    - else `MLFLOW_RUN_ID` set (as by `mlflow run`): attach to that run; `set_experiment` is never
      called. The run keeps its name unless `run_name_explicit`.
    - else a new run named `run_name`: nested under `nested_parent_id` in the parent's experiment
      when given, else in the experiment chosen by `resolve_experiment`.
    Raises TrackingError when the store cannot be reached or the run cannot be opened.
    """
    client = connect(uri)
    mlflow.set_tracking_uri(uri)
    tags = {str(k): str(v) for k, v in (tags or {}).items()}
    # MLFLOW_RUN_ID is used once (as mlflow.start_run does): runs opened later in this process,
    # e.g. the children of a seed group, are new runs.
    env_run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    attach_id = resume_run_id or env_run_id or None
    try:
        if attach_id:
            existing = client.get_run(attach_id)
            if existing.info.lifecycle_stage == "deleted":
                raise TrackingError(f"run {attach_id} is deleted")
            active = mlflow.start_run(
                run_id=attach_id,
                run_name=run_name if run_name_explicit else None,
                tags=tags or None,
                description=description,
                log_system_metrics=log_system_metrics,
            )
            experiment_name = client.get_experiment(active.info.experiment_id).name
        else:
            if nested_parent_id:  # children live in their parent's experiment
                experiment_id = client.get_run(nested_parent_id).info.experiment_id
                experiment_name = client.get_experiment(experiment_id).name
            else:
                experiment_id, experiment_name = resolve_experiment(
                    client, experiment_name, experiment_from_cli
                )
            active = mlflow.start_run(
                experiment_id=experiment_id,
                run_name=run_name,
                nested=nested_parent_id is not None,
                parent_run_id=nested_parent_id,
                tags=tags or None,
                description=description,
                log_system_metrics=log_system_metrics,
            )
    except TrackingError:
        raise
    except Exception as exc:
        what = f"run {attach_id}" if attach_id else "a run"
        raise TrackingError(f"could not open {what} at {uri}: {short_reason(exc)}") from exc
    return MlflowWriter(
        client,
        run_id=active.info.run_id,
        run_name=active.info.run_name,
        experiment_id=active.info.experiment_id,
        experiment_name=experiment_name,
        artifact_uri=active.info.artifact_uri,
        uri=uri,
        attached=bool(attach_id),
        retries=retries,
        backoff=backoff,
    )


# ---------------------------------------------------------------------------------------------
# Artifacts, outside the writer


def artifact_exists(client: MlflowClient, run_id: str, path: str) -> bool:
    """True when `path` (file or directory) is among the run's artifacts."""
    path = path.strip("/")
    parent = path.rsplit("/", 1)[0] if "/" in path else None
    return any(info.path == path for info in client.list_artifacts(run_id, parent))


def download_artifact(
    client: MlflowClient, run_id: str, path: str, dst: str | Path
) -> Path | None:
    """Download an artifact file or directory into `dst`; None when the run has no such
    artifact. Other failures raise TrackingError."""
    try:
        if not artifact_exists(client, run_id, path):
            return None
        Path(dst).mkdir(parents=True, exist_ok=True)
        return Path(client.download_artifacts(run_id, path.strip("/"), str(dst)))
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise TrackingError(f"could not download {path} of run {run_id}: {short_reason(exc)}") from exc
    except OSError as exc:
        raise TrackingError(f"could not download {path} of run {run_id}: {short_reason(exc)}") from exc


def upload_dir(
    run_id: str, local_dir: str | Path, artifact_path: str | None = None, uri: str | None = None
) -> None:
    """Log every file under `local_dir` to the run under `artifact_path` (same relative paths,
    replacing earlier versions); used by the report. Raises TrackingError."""
    client = connect(uri or resolve_tracking_uri(None, None)[0])
    _, reason = with_retries(
        f"upload of {local_dir}",
        lambda: client.log_artifacts(run_id, str(local_dir), artifact_path),
    )
    if reason:
        raise TrackingError(f"tracking failure: {reason}")


# ---------------------------------------------------------------------------------------------
# The writer


WRITER_NICENESS = 10


class _Item:
    __slots__ = ("what", "call", "cleanup")

    def __init__(self, what: str, call: Callable[[], Any], cleanup: Callable[[], None] | None):
        self.what, self.call, self.cleanup = what, call, cleanup


class MlflowWriter:
    """`RunWriter` for one MLflow run. Logging methods return at once; a background thread makes
    the calls in order. A call that still fails after `retries` retries sets `error`; later items
    are dropped and `check()` raises TrackingError("tracking failure: <reason>")."""

    def __init__(
        self,
        client: MlflowClient,
        *,
        run_id: str,
        run_name: str = "",
        experiment_id: str = "",
        experiment_name: str = "",
        artifact_uri: str = "",
        uri: str = "",
        attached: bool = False,
        retries: int = RETRIES,
        backoff: float = BACKOFF_SECONDS,
    ):
        self.client = client
        self.run_id = run_id
        self.run_name = run_name
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name
        self.artifact_uri = artifact_uri
        self.uri = uri
        self.attached = attached
        self.retries = retries
        self.backoff = backoff
        self.error: str | None = None
        self.status: str = "RUNNING"
        self.dataset_digests: dict[str, str] = {}
        self._staging = Path(tempfile.mkdtemp(prefix="mixvae-upload-"))
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._pending = 0
        self._idle = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(
            target=self._drain, name=f"mixvae-mlflow-{run_id[:8]}", daemon=True
        )
        self._thread.start()

    # -- the queue -------------------------------------------------------------------------

    def _submit(self, what: str, call: Callable[[], Any], cleanup: Callable[[], None] | None = None):
        if self._closed:
            raise RuntimeError(f"the writer of run {self.run_id} is closed")
        with self._idle:
            self._pending += 1
        self._queue.put(_Item(what, call, cleanup))

    def _drain(self) -> None:
        # The writer should use cores the training loop leaves idle: on Linux a thread has its own nice
        # value, so lowering this one's priority keeps MLflow's work from slowing the epochs down.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if self.error is None:  # after a failure, later items are dropped
                    _, reason = with_retries(item.what, item.call, self.retries, self.backoff)
                    if reason:
                        self.error = reason
                        log.warning("tracking failure: %s", reason)
            finally:
                if item.cleanup is not None:
                    with contextlib.suppress(OSError):
                        item.cleanup()
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()

    def _stage(self, source: Path) -> Path:
        """Copy a file or directory aside, so later writes to it do not race the upload."""
        slot = self._staging / uuid.uuid4().hex
        slot.mkdir()
        target = slot / source.name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        return target

    # -- logging ---------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, str]) -> None:
        entries = [Param(key, value) for key, value in check_param_keys(params).items()]
        self._submit("log_params", lambda: self.client.log_batch(self.run_id, params=entries))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        entries = [RunTag(str(key), str(value)) for key, value in tags.items()]
        self._submit("set_tags", lambda: self.client.log_batch(self.run_id, tags=entries))

    def _log_metrics(self, what: str, step: int, metrics: Mapping[str, float]) -> None:
        timestamp = int(time.time() * 1000)  # one timestamp for the whole batch
        entries = [
            Metric(key, value, timestamp, int(step))
            for key, value in as_float_metrics(metrics).items()
        ]
        self._submit(what, lambda: self.client.log_batch(self.run_id, metrics=entries))

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every `train/` and `val/` value of epoch `step` in one `log_batch`."""
        self._log_metrics(f"log_batch of epoch {step}", step, metrics)

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """The bare summary keys in one `log_batch`."""
        self._log_metrics("log_batch of the summary", step, metrics)

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        staged = self._stage(Path(local_path))
        self._submit(
            f"upload of {join_artifact_path(artifact_dir, staged.name)}",
            lambda: self.client.log_artifact(self.run_id, str(staged), artifact_dir),
            cleanup=lambda: shutil.rmtree(staged.parent),
        )

    def log_artifacts(self, local_dir: str | Path, artifact_dir: str | None = None) -> None:
        staged = self._stage(Path(local_dir))
        self._submit(
            f"upload of {artifact_dir or 'artifacts'}/",
            lambda: self.client.log_artifacts(self.run_id, str(staged), artifact_dir),
            cleanup=lambda: shutil.rmtree(staged.parent),
        )

    def log_inputs(self, records: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        """Log dataset records ({name, features, targets, source, context}) with `log_inputs`.
        The datasets (and their digests, in `dataset_digests`) are built here; the call is queued."""
        entries = []
        for record in normalise_records(records):
            dataset = numpy_dataset(record)
            self.dataset_digests[record["name"]] = dataset.digest
            context = InputTag(key="mlflow.data.context", value=str(record["context"]))
            entries.append(DatasetInput(dataset=dataset._to_mlflow_entity(), tags=[context]))
        self._submit("log_inputs", lambda: self.client.log_inputs(self.run_id, datasets=entries))

    # -- lifecycle -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise TrackingError when a queued call has failed for good (once per epoch)."""
        if self.error is not None:
            raise TrackingError(f"tracking failure: {self.error}")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued call is done; False when `timeout` seconds passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def set_status(
        self, status: str, reason: str | None = None, flush_timeout: float | None = None
    ) -> bool:
        """Flush, record `reason` in `mixvae.status_reason`, end the run with `status`.

        Best effort, never raises on a store failure: returns False (and sets `error`) when the
        store did not take the status."""
        check_status(status)
        self.flush(flush_timeout)
        ok = True
        if reason:
            _, problem = with_retries(
                "set_tag mixvae.status_reason",
                lambda: self.client.set_tag(self.run_id, STATUS_REASON_TAG, reason[:5000]),
                self.retries,
                self.backoff,
            )
            ok = problem is None
        problem = self._terminate(status)
        if problem:
            ok = False
            self.error = self.error or problem
            log.warning("could not mark run %s %s: %s", self.run_id, status, problem)
        else:
            self.status = status
        return ok and problem is None

    def _terminate(self, status: str) -> str | None:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            # Ours is the active fluent run of this thread: end it the fluent way, which also
            # stops system metrics. end_run drops it from the stack before calling the store, so
            # a failure here is retried with the client.
            try:
                mlflow.end_run(status)
                return None
            except Exception as exc:
                log.debug("end_run failed: %s", exc)
        _, problem = with_retries(
            f"set_terminated({status})",
            lambda: self.client.set_terminated(self.run_id, status),
            self.retries,
            self.backoff,
        )
        return problem

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread after the queued calls (waiting at most `timeout` s). Does not end
        the run: call `set_status` first."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> MlflowWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.status == "RUNNING":
            if exc_type is None:
                self.set_status("FINISHED")
            elif issubclass(exc_type, KeyboardInterrupt):
                self.set_status("KILLED", "interrupted", flush_timeout=10)
            else:
                self.set_status("FAILED", f"{exc_type.__name__}: {exc}")
        self.close()

    # -- reading ---------------------------------------------------------------------------

    def download_artifact(self, path: str, dst: str | Path) -> Path | None:
        return download_artifact(self.client, self.run_id, path, dst)


def numpy_dataset(record: Mapping[str, Any]):
    """`mlflow.data.from_numpy` for one dataset record; `source` is a file path (or None). A
    record's own `digest` (mixvae.data's, also in the tag `mixvae.dataset_digest`) is kept, so the
    MLflow UI shows the same digest; without one MLflow computes it."""
    import numpy as np

    source = record.get("source")
    targets = record.get("targets")
    digest = record.get("digest")
    with warnings.catch_warnings():
        # A plain path matches both local-file dataset sources; MLflow warns and picks one.
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(
            features=np.asarray(record["features"]),
            targets=None if targets is None else np.asarray(targets),
            name=str(record["name"]),
            source=None if source is None else str(source),
            digest=None if digest is None else str(digest),
        )
