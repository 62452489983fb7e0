"""`MlflowWriter`: the `RunWriter` that sends one run's params, tags, metrics, dataset inputs and
artifacts to MLflow without making the training loop wait.

Every MLflow call of the loop runs, in the order the loop made it, on one worker thread of a
`ThreadPoolExecutor`; the loop only submits. Retries are MLflow's own (its HTTP retry settings,
see connection.py); a call that still fails is the run's tracking failure, reported by `check()`.

Why not MLflow's asynchronous logging (`log_batch(synchronous=False)`)? It covers params, tags and
metrics only: MLflow uploads files synchronously, and the checkpoint the loop uploads every few
epochs must not hold the loop up nor change under the upload (tests/test_tracking.py's round trip
logs a file, then rewrites it). Its `RunOperations` can only be waited on, so a per-epoch `check()`
would wait for the epoch just logged, and a failure comes back wrapped in a list
("The following failures occurred ...") instead of the store's own reason, which
`test_failing_call_surfaces_in_check` asserts. One ordered worker does both jobs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag

from mixvae.tracking.artifacts import download_artifact
from mixvae.tracking.connection import short_reason
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

WRITER_NICENESS = 10


def lower_thread_priority() -> None:
    """Run in the worker thread: the writer should use cores the training loop leaves idle. On
    Linux a thread has its own nice value, so lowering this one's priority keeps MLflow's work
    from slowing the epochs down."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)


class MlflowWriter:
    """`RunWriter` for one MLflow run. Logging methods return at once; the worker thread makes the
    calls in order. A call that fails sets `error`; later calls are skipped and `check()` raises
    TrackingError("tracking failure: <reason>")."""

    def __init__(self, client: MlflowClient, *, run_id: str, run_name: str = "",
                 experiment_id: str = "", experiment_name: str = "", artifact_uri: str = "",
                 uri: str = "", attached: bool = False):
        self.client = client
        self.run_id = run_id
        self.run_name = run_name
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name
        self.artifact_uri = artifact_uri
        self.uri = uri
        self.attached = attached
        self.error: str | None = None
        self.status: str = "RUNNING"
        self.dataset_digests: dict[str, str] = {}
        self._staging = Path(tempfile.mkdtemp(prefix="mixvae-upload-"))
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mixvae-mlflow-{run_id[:8]}",
                                          initializer=lower_thread_priority)
        self._pending: list[Future] = []
        self._closed = False

    # -- the worker ------------------------------------------------------------------------

    def _submit(self, what: str, call: Callable[[], Any], cleanup: Callable[[], None] | None = None):
        if self._closed:
            raise RuntimeError(f"the writer of run {self.run_id} is closed")
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._worker.submit(self._run, what, call, cleanup))

    def _run(self, what: str, call: Callable[[], Any], cleanup: Callable[[], None] | None) -> None:
        """One submitted call, on the worker thread; skipped once an earlier call has failed."""
        try:
            if self.error is None:
                try:
                    call()
                except Exception as exc:  # any failure of the store ends the run's tracking
                    self.error = f"{what} failed: {short_reason(exc)}"
                    log.warning("tracking failure: %s", self.error)
        finally:
            if cleanup is not None:
                with contextlib.suppress(OSError):
                    cleanup()

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
        entries = [Metric(key, value, timestamp, int(step)) for key, value in as_float_metrics(metrics).items()]
        self._submit(what, lambda: self.client.log_batch(self.run_id, metrics=entries))

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every `train/` and `val/` value of epoch `step` in one `log_batch`."""
        self._log_metrics(f"log_batch of epoch {step}", step, metrics)

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """The bare summary keys in one `log_batch`."""
        self._log_metrics("log_batch of the summary", step, metrics)

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        staged = self._stage(Path(local_path))
        self._submit(f"upload of {join_artifact_path(artifact_dir, staged.name)}",
                     lambda: self.client.log_artifact(self.run_id, str(staged), artifact_dir),
                     cleanup=lambda: shutil.rmtree(staged.parent))

    def log_artifacts(self, local_dir: str | Path, artifact_dir: str | None = None) -> None:
        staged = self._stage(Path(local_dir))
        self._submit(f"upload of {artifact_dir or 'artifacts'}/",
                     lambda: self.client.log_artifacts(self.run_id, str(staged), artifact_dir),
                     cleanup=lambda: shutil.rmtree(staged.parent))

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
        """Raise TrackingError when a submitted call has failed (once per epoch)."""
        if self.error is not None:
            raise TrackingError(f"tracking failure: {self.error}")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted call is done; False when `timeout` seconds passed first."""
        _, not_done = wait_for_futures(self._pending, timeout)
        self._pending = list(not_done)
        return not not_done

    def set_status(self, status: str, reason: str | None = None, flush_timeout: float | None = None) -> bool:
        """Flush, record `reason` in `mixvae.status_reason`, end the run with `status`.

        Best effort, never raises on a store failure: returns False (and sets `error`) when the
        store did not take the status."""
        check_status(status)
        self.flush(flush_timeout)
        reason_kept = True
        if reason:
            try:
                self.client.set_tag(self.run_id, STATUS_REASON_TAG, reason[:5000])
            except Exception as exc:
                reason_kept = False
                log.warning("could not record the reason of run %s: %s", self.run_id, short_reason(exc))
        problem = self._terminate(status)
        if problem:
            self.error = self.error or problem
            log.warning("could not mark run %s %s: %s", self.run_id, status, problem)
            return False
        self.status = status
        return reason_kept

    def _terminate(self, status: str) -> str | None:
        active = mlflow.active_run()
        if active is not None and active.info.run_id == self.run_id:
            # Ours is the active fluent run of this thread: end it the fluent way, which also
            # stops system metrics. end_run drops it from the stack before calling the store, so
            # a failure here is tried once more with the client.
            try:
                mlflow.end_run(status)
                return None
            except Exception as exc:
                log.debug("end_run failed: %s", exc)
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            return f"set_terminated({status}) failed: {short_reason(exc)}"
        return None

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker after the submitted calls (waiting at most `timeout` s; calls not
        started by then are dropped, and a call still running finishes before the process exits,
        within MLflow's HTTP timeout and retries). Does not end the run: call `set_status` first."""
        if self._closed:
            return
        self._closed = True
        finished = self.flush(timeout)
        self._worker.shutdown(wait=False, cancel_futures=True)
        if finished:
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
