"""`MlflowWriter`: the `RunWriter` that sends one run's params, tags, metrics, dataset inputs and
artifacts to MLflow without making the training loop wait, and without losing them when the store
goes away for a while.

Every call is first written to the run's spool on local disk (spool.py, in the order the loop made
it) and then made, oldest first, by one worker thread; the loop only submits. A call is removed from
the spool once the store has acknowledged it, so nothing is sent twice. When the store does not
answer (after MLflow's own HTTP retries, see connection.py), the worker keeps the calls and tries
again with growing pauses (at most `MAX_PAUSE_S`) while training goes on. Training's end waits for
the store until the outage has lasted `outage_tolerance` seconds (`tracking.outage_tolerance_sec`);
if it is still away then, the final status joins the spool too, `undelivered` says what is kept where,
and `mixvae sync RUN_ID` delivers it later. A call the store answers and refuses (e.g. a changed
param) is the run's tracking failure, reported by `check()`, as before spooling existed.

Consecutive epochs' metrics share one `log_batch` (at most `MAX_BATCH_METRICS` values; a call of
another kind is never overtaken): an epoch waits up to `GATHER_S` for the next ones unless a flush
is waiting or the store is away. Each value keeps its own step and timestamp, so the store records
what separate calls would; a batch the store refuses is made again call by call, so only the
refused epoch fails. With short epochs this halves the worker's work per epoch or better (on 2 cores
the worker shares the cores and the interpreter with the training loop).

Why not MLflow's asynchronous logging (`log_batch(synchronous=False)`)? It covers params, tags and
metrics only: MLflow uploads files synchronously, and the checkpoint the loop uploads every few
epochs must not hold the loop up nor change under the upload (tests/test_tracking.py's round trip
logs a file, then rewrites it). It keeps its queue in memory, so an outage longer than its retries
loses the calls. And a failure comes back wrapped in a list ("The following failures occurred ...")
instead of the store's own reason, which `test_failing_call_surfaces_in_check` asserts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from mixvae.tracking import delivery
from mixvae.tracking.artifacts import download_artifact
from mixvae.tracking.connection import first_contact_settings, short_reason
from mixvae.tracking.spool import Spool, spool_dir
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
DEFAULT_OUTAGE_TOLERANCE_S = 600.0
FIRST_PAUSE_S = 1.0     # the pause after the first failed try; it doubles after each failure …
MAX_PAUSE_S = 30.0      # … up to this
GATHER_S = 1.0          # an epoch's metrics wait at most this long for later epochs' to share its log_batch …
MAX_BATCH_METRICS = 1000  # … of at most this many values (MLflow's limit for one log_batch)


def lower_thread_priority() -> None:
    """Run in the worker thread: the writer should use cores the training loop leaves idle. On
    Linux a thread has its own nice value, so lowering this one's priority keeps MLflow's work
    from slowing the epochs down."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)


class MlflowWriter:
    """`RunWriter` for one MLflow run. Logging methods spool the call and return; the worker thread
    makes the calls in order. A call the store refuses sets `error`, and `check()` raises
    TrackingError("tracking failure: <reason>"); a store that does not answer only delays them.

    `spool` defaults to the run's spool directory in the working directory; an existing spool's
    calls are delivered first (that is how `mixvae sync` works). `notify` receives one line when the
    store stops answering and when it answers again (default: a logging warning)."""

    def __init__(self, client: MlflowClient, *, run_id: str, run_name: str = "",
                 experiment_id: str = "", experiment_name: str = "", artifact_uri: str = "",
                 uri: str = "", attached: bool = False, spool: str | Path | None = None,
                 outage_tolerance: float = DEFAULT_OUTAGE_TOLERANCE_S,
                 notify: Callable[[str], None] | None = None):
        self.client = client
        self.run_id = run_id
        self.run_name = run_name
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name
        self.artifact_uri = artifact_uri
        self.uri = uri
        self.attached = attached
        self.error: str | None = None
        self.undelivered: str | None = None   # what was kept where, once the final status is spooled
        self.status: str = "RUNNING"
        self.dataset_digests: dict[str, str] = {}
        self.outage_tolerance = float(outage_tolerance)
        self.notify = notify or (lambda line: log.warning("%s", line))
        self.spool = Spool(spool or spool_dir(run_id), run_id=run_id, uri=uri)
        if not self.spool.hold():
            raise TrackingError(f"run {run_id} is being written by another mixvae process "
                                f"(its spool {self.spool.directory} is in use)")
        self._queue: deque[int] = deque(self.spool.pending())
        # The queued epoch-metrics calls: sequence number → (number of values, when submitted). Kept
        # calls from an earlier process count as old: they are sent at once.
        self._epochs: dict[int, tuple[int, float]] = {}
        for seq in self._queue:
            call = self.spool.read(seq)
            if delivery.is_epoch_metrics(call):
                self._epochs[seq] = (len(call["metrics"]), -math.inf)
        self._hurry = 0  # flushes waiting: nothing waits for later epochs then
        self._cond = threading.Condition()
        self._busy = False
        self._poke = False
        self._attempts = 0
        self._outage_since: float | None = None    # when the store stopped answering (monotonic)
        self._recovered_from: float | None = None  # the start of an outage whose kept calls are being sent
        self._outage_reason = ""
        self._pause = FIRST_PAUSE_S
        self._next_try = 0.0
        self._delivered_in_outage = 0
        self._stop = False
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"mixvae-mlflow-{run_id[:8]}", daemon=True)
        self._thread.start()

    # -- the worker ------------------------------------------------------------------------

    def _submit(self, call: dict, source: Path | None = None) -> None:
        if self._closed:
            raise RuntimeError(f"the writer of run {self.run_id} is closed")
        seq = self.spool.append(call, source)
        with self._cond:
            if delivery.is_epoch_metrics(call):
                self._epochs[seq] = (len(call["metrics"]), time.monotonic())
            self._queue.append(seq)
            self._cond.notify_all()

    def _gave_up(self, now: float | None = None) -> bool:
        """The outage has lasted the tolerance: training's end no longer waits for the store."""
        return self._outage_since is not None and (now or time.monotonic()) - self._outage_since >= \
            self.outage_tolerance

    def _next_calls(self) -> list[int]:
        """What the worker sends next: the oldest call, and when it is an epoch's metrics, the epochs
        queued right behind it, as long as their values fit one log_batch."""
        seqs, values = [], 0
        for seq in self._queue:
            size = self._epochs.get(seq, (None,))[0]
            if size is None or (seqs and values + size > MAX_BATCH_METRICS):
                break
            seqs.append(seq)
            values += size
        return seqs or [self._queue[0]]

    def _gather_until(self) -> float | None:
        """When the worker waits for more epochs before it sends the queued ones (every queued call is
        an epoch's metrics, one more would still fit, nobody flushes, the store answers): the oldest
        one's submission time plus GATHER_S; else None. Fewer, larger log_batches cost the training
        loop less (the worker shares the cores and the interpreter with it)."""
        if self._hurry or self._outage_since is not None or not self._queue:
            return None
        head = self._epochs.get(self._queue[0])
        if head is None:
            return None
        sizes = [self._epochs.get(seq, (None,))[0] for seq in self._queue]
        if None in sizes or sum(sizes) + max(sizes) > MAX_BATCH_METRICS:
            return None
        return head[1] + GATHER_S

    def _may_try(self, now: float) -> bool:
        if not self._queue:
            return False
        if self._poke or self._outage_since is None:
            gather = None if self._poke else self._gather_until()
            return gather is None or now >= gather
        return now >= self._next_try

    def _wake_in(self, now: float) -> float | None:
        """How long the idle worker waits before it looks again (None: until notified)."""
        if not self._queue:
            return None
        gather = self._gather_until()
        return max(0.05, (gather if gather is not None else self._next_try) - now)

    def _work(self) -> None:
        lower_thread_priority()
        while True:
            with self._cond:
                while not self._stop and not self._may_try(time.monotonic()):
                    self._cond.wait(self._wake_in(time.monotonic()))
                if self._stop:
                    return
                self._busy, self._poke = True, False
                seqs = self._next_calls()
            done, outage = self._run(seqs)
            with self._cond:
                self._busy = False
                self._attempts += 1
                for _ in range(done):
                    self._epochs.pop(self._queue.popleft(), None)
                if outage is None:
                    self._answered(done)
                else:
                    self._not_answered(outage)
                self._cond.notify_all()

    def _run(self, seqs: list[int]) -> tuple[int, str | None]:
        """Make spooled calls, oldest first (on the worker thread); several are epochs' metrics and go
        in one log_batch. → (how many calls the store answered: they are gone from the spool, done
        or refused and recorded in `error`; the reason it stopped answering, or None).
        bench/mlflow_overhead.py times this method."""
        calls = [self.spool.read(seq) for seq in seqs]
        if len(calls) > 1:
            problem = self._make(delivery.merged_epochs(calls))
            if problem is None:
                for seq in seqs:
                    self.spool.remove(seq)
                return len(seqs), None
            if delivery.is_outage(problem):
                return 0, delivery.outage_reason(problem)
            # Refused together: made one at a time below, so each refusal is its own call's.
        for done, (seq, call) in enumerate(zip(seqs, calls, strict=True)):
            problem = self._make(call)
            if problem is not None and delivery.is_outage(problem):
                return done, delivery.outage_reason(problem)
            if problem is not None and self.error is None:  # refused: the run's tracking failure
                self.error = f"{call['what']} failed: {short_reason(problem)}"
                log.warning("tracking failure: %s", self.error)
            self.spool.remove(seq)
            if call["op"] == "status":
                self.status = call["status"]
        return len(seqs), None

    def _make(self, call: dict) -> Exception | None:
        """Make one call; → what MLflow raised, or None."""
        try:
            delivery.deliver(self.client, self.run_id, call, self.spool)
        except Exception as exc:
            return exc
        return None

    def _answered(self, calls: int) -> None:
        """The store took `calls` calls: an outage is over; say so once the calls it kept are in."""
        if self._outage_since is not None:
            self._recovered_from = self._outage_since
            self._outage_since, self._pause = None, FIRST_PAUSE_S
        if self._recovered_from is not None:
            self._delivered_in_outage += calls
            if not self._queue:
                seconds = time.monotonic() - self._recovered_from
                self.notify(f"tracking store answers again after {seconds:.0f} s; "
                            f"{self._delivered_in_outage} kept calls delivered")
                self._recovered_from, self._delivered_in_outage = None, 0

    def _not_answered(self, reason: str) -> None:
        now = time.monotonic()
        if self._outage_since is None:
            self._outage_since, self._outage_reason = now, reason
            self.notify(f"tracking store not answering ({reason}); training goes on, the calls are kept in "
                        f"{self.spool.directory} and sent when it answers")
        self._next_try = now + self._pause
        self._pause = min(self._pause * 2, MAX_PAUSE_S)

    # -- logging ---------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, str]) -> None:
        self._submit(delivery.params_call(check_param_keys(params)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._submit(delivery.tags_call(tags))

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        """Every `train/` and `val/` value of epoch `step`, with one timestamp, in one `log_batch` (which
        the epochs queued behind it may share)."""
        self._submit(delivery.metrics_call(f"log_batch of epoch {step}", step, as_float_metrics(metrics), True))

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """The bare summary keys in one `log_batch`."""
        self._submit(delivery.metrics_call("log_batch of the summary", step, as_float_metrics(metrics), False))

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        source = Path(local_path)
        what = f"upload of {join_artifact_path(artifact_dir, source.name)}"
        self._submit(delivery.upload_call(what, artifact_dir, directory=False), source)

    def log_artifacts(self, local_dir: str | Path, artifact_dir: str | None = None) -> None:
        what = f"upload of {artifact_dir or 'artifacts'}/"
        self._submit(delivery.upload_call(what, artifact_dir, directory=True), Path(local_dir))

    def log_inputs(self, records: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        """Log dataset records ({name, features, targets, source, context}) with `log_inputs`.
        The datasets (and their digests, in `dataset_digests`) are built here; the call is queued."""
        datasets = []
        for record in normalise_records(records):
            dataset = numpy_dataset(record)
            self.dataset_digests[record["name"]] = dataset.digest
            datasets.append((dataset._to_mlflow_entity(), record["context"]))
        self._submit(delivery.inputs_call(datasets))

    # -- lifecycle -------------------------------------------------------------------------

    def check(self) -> None:
        """Raise TrackingError when the store refused a call (once per epoch). An outage is not an
        error: the calls wait in the spool."""
        if self.error is not None:
            raise TrackingError(f"tracking failure: {self.error}")

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every call is delivered; False when `timeout` seconds passed first, or when the
        store has not answered for `outage_tolerance` seconds and one last try failed too."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._hurry += 1  # the worker sends what it has without waiting for more epochs
            self._cond.notify_all()
            try:
                return self._wait_for_delivery(deadline, timeout)
            finally:
                self._hurry -= 1

    def _wait_for_delivery(self, deadline: float | None, timeout: float | None) -> bool:
        """`flush`'s wait, with the lock held."""
        last_try = None
        if self._queue and self._outage_since is not None and not self._gave_up():
            left = self.outage_tolerance - (time.monotonic() - self._outage_since)
            left = left if timeout is None else min(left, timeout)
            self.notify(f"waiting up to {left:.0f} s more for the tracking store to take "
                        f"{len(self._queue)} kept calls (tracking.outage_tolerance_sec)")
        while self._queue and not self._stop:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if not self._busy and self._gave_up(now):
                if last_try is not None and self._attempts >= last_try:
                    break
                if last_try is None:
                    self._poke, last_try = True, self._attempts + 1
                    self._cond.notify_all()
            try:
                self._cond.wait(1.0 if deadline is None else max(0.0, min(1.0, deadline - now)))
            except KeyboardInterrupt:
                if self._outage_since is None:
                    raise
                self.outage_tolerance = 0.0  # Ctrl-C while waiting for an absent store: stop waiting
                self.notify("stopped waiting for the tracking store (interrupted)")
                break
        return not self._queue

    def set_status(self, status: str, reason: str | None = None, flush_timeout: float | None = None) -> bool:
        """Flush, record `reason` in `mixvae.status_reason`, end the run with `status`.

        Best effort, never raises on a store failure: returns False when the store did not take the
        status; `error` says why when it refused, `undelivered` what was kept where when it did
        not answer (then `mixvae sync` ends the run later)."""
        check_status(status)
        if not self.flush(flush_timeout):
            return self._keep_status(status, reason)
        reason_kept = True
        if reason:
            try:
                self.client.set_tag(self.run_id, STATUS_REASON_TAG, reason[:5000])
            except Exception as exc:
                if delivery.is_outage(exc):
                    return self._keep_status(status, reason)
                reason_kept = False
                log.warning("could not record the reason of run %s: %s", self.run_id, short_reason(exc))
        problem = self._terminate(status)
        if problem is not None:
            if delivery.is_outage(problem):
                return self._keep_status(status, reason)
            self.error = self.error or f"set_terminated({status}) failed: {short_reason(problem)}"
            log.warning("could not mark run %s %s: %s", self.run_id, status, self.error)
            return False
        self.status = status
        return reason_kept

    def _keep_status(self, status: str, reason: str | None) -> bool:
        """The store is away at the end: the final status joins the spool, for `mixvae sync`."""
        self._submit(delivery.status_call(status, reason))
        self._forget_active_run(status, reason)
        store = f"the tracking store at {self.spool.uri}" if self.spool.uri else "the tracking store"
        self.undelivered = (
            (f"{store} did not answer ({self._outage_reason})" if self._outage_since is not None
             else f"{store} had not taken every call in time")
            + f"; run {self.run_id} is to end {status}, and what the store has not received "
            f"({self.spool.summary()}) is kept in {self.spool.directory}; deliver it with: mixvae sync {self.run_id}")
        return False

    def _forget_active_run(self, status: str, reason: str | None) -> None:
        """Ours is MLflow's active run of this thread: leave it, with one quick try to end it (a store
        that is only slow, or answers again, shows the status at once; the spool repeats it later)."""
        active = mlflow.active_run()
        if active is None or active.info.run_id != self.run_id:
            return
        with first_contact_settings():
            if reason and self._outage_since is None:
                with contextlib.suppress(Exception):
                    self.client.set_tag(self.run_id, STATUS_REASON_TAG, reason[:5000])
            with contextlib.suppress(Exception):
                mlflow.end_run(status)  # leaves the run before it calls the store

    def _terminate(self, status: str) -> Exception | None:
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
            return exc
        return None

    def close(self, timeout: float | None = None) -> None:
        """Stop the worker after the delivered calls (waiting at most `timeout` s; a call still
        running finishes before the process exits, within MLflow's HTTP timeout and retries). Calls
        not delivered stay in the spool for `mixvae sync`; an empty spool is removed. Does not end
        the run: call `set_status` first."""
        if self._closed:
            return
        self._closed = True
        finished = self.undelivered is None and self.flush(timeout)  # no second last try
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if finished:
            self._thread.join(timeout=5)
            if not self.spool.pending():
                self.spool.discard()
                return
        self.spool.release()

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
