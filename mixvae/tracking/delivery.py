"""One spooled tracking call: how it is written down (plain JSON data), how it is made against MLflow,
and whether a failure means "the store is not there" (keep the call, try again later) or "the store
refused it" (the run's tracking failure).

Calls are kept with everything they send, metric timestamps included, so a call made again sends
exactly the same values: MLflow's database stores keep one row per metric (key, value, timestamp,
step), so a batch that reached the store but whose answer was lost is not recorded twice.
"""

from __future__ import annotations

import errno
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from mixvae.tracking.spool import Spool
from mixvae.tracking.writer import STATUS_REASON_TAG

CONTEXT_TAG = "mlflow.data.context"

# -- what a call is ---------------------------------------------------------------------------


def params_call(params: Mapping[str, str]) -> dict:
    return {"op": "batch", "what": "log_params", "params": [[k, v] for k, v in params.items()]}


def tags_call(tags: Mapping[str, str]) -> dict:
    return {"op": "batch", "what": "set_tags", "tags": [[str(k), str(v)] for k, v in tags.items()]}


def metrics_call(what: str, step: int, metrics: Mapping[str, float], epoch: bool) -> dict:
    """One `log_batch` of metrics, every value with the same timestamp (taken now)."""
    timestamp = int(time.time() * 1000)
    call = {"op": "batch", "what": what,
            "metrics": [[key, float(value), timestamp, int(step)] for key, value in metrics.items()]}
    if epoch:
        call["step"] = int(step)
    return call


def is_epoch_metrics(call: dict) -> bool:
    """An epoch's metrics alone (no params or tags): such calls may share one `log_batch`."""
    return call.get("op") == "batch" and call.get("step") is not None and not call.get("params") \
        and not call.get("tags")


def merged_epochs(calls: list[dict]) -> dict:
    """One `log_batch` of several epochs' metrics (`is_epoch_metrics` calls, oldest first). Every value
    keeps its own step and timestamp, so the store records exactly what the separate calls would."""
    steps = [call["step"] for call in calls]
    return {"op": "batch", "what": f"log_batch of epochs {min(steps)}–{max(steps)}",
            "metrics": [metric for call in calls for metric in call["metrics"]]}


def upload_call(what: str, artifact_dir: str | None, directory: bool) -> dict:
    """An upload; the spool adds the copy of the file (or directory) it sends."""
    return {"op": "artifacts" if directory else "artifact", "what": what, "artifact_dir": artifact_dir}


def inputs_call(datasets: Iterable[tuple[Any, str]]) -> dict:
    """`log_inputs` of (mlflow.entities.Dataset, context) pairs."""
    return {"op": "inputs", "what": "log_inputs",
            "datasets": [{"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
                          "schema": d.schema, "profile": d.profile, "context": context}
                         for d, context in datasets]}


def status_call(status: str, reason: str | None) -> dict:
    """The end of the run: its status, the reason (a tag) and the time training ended."""
    return {"op": "status", "what": f"the final status {status}", "status": status, "reason": reason,
            "end_time": int(time.time() * 1000)}


# -- making it --------------------------------------------------------------------------------


def deliver(client: MlflowClient, run_id: str, call: dict, spool: Spool) -> None:
    """Make one spooled call; raises what MLflow raised."""
    op = call["op"]
    if op == "batch":
        client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v, ts, step in call.get("metrics", [])],
                         params=[Param(k, v) for k, v in call.get("params", [])],
                         tags=[RunTag(k, v) for k, v in call.get("tags", [])])
    elif op == "artifact":
        client.log_artifact(run_id, str(spool.file(call)), call.get("artifact_dir"))
    elif op == "artifacts":
        client.log_artifacts(run_id, str(spool.file(call)), call.get("artifact_dir"))
    elif op == "inputs":
        datasets = [DatasetInput(dataset=Dataset(d["name"], d["digest"], d["source_type"], d["source"], d["schema"],
                                                 d["profile"]),
                                 tags=[InputTag(key=CONTEXT_TAG, value=str(d["context"]))])
                    for d in call["datasets"]]
        try:
            client.log_inputs(run_id, datasets=datasets)
        except Exception as exc:
            if not _lost_dataset_race(exc):
                raise
            client.log_inputs(run_id, datasets=datasets)  # the dataset exists now: only the run's link is added
    elif op == "status":
        if call.get("reason"):
            client.set_tag(run_id, STATUS_REASON_TAG, call["reason"][:5000])
        client.set_terminated(run_id, call["status"], end_time=call.get("end_time"))
    else:
        raise ValueError(f"unknown spooled call {op!r}")


def _lost_dataset_race(exc: BaseException) -> bool:
    """Several runs logged the same dataset into a new experiment at once: MLflow's database store looks
    the dataset up, finds none, and inserts it, so all but the first insert break its unique key and the
    whole call is rolled back. Made again, the call finds the dataset and succeeds."""
    text = str(exc)
    return "datasets" in text and ("UNIQUE constraint failed" in text or "duplicate key" in text.lower())


# -- outage or refusal ------------------------------------------------------------------------

# Words of the errors that mean "nobody answered" or "try again later": MLflow's HTTP client after
# its own retries, urllib3 and requests, and database stores (SQLAlchemy, sqlite, PostgreSQL, MySQL).
_OUTAGE_WORDS = (
    "max retries exceeded", "connection refused", "connection aborted", "connection reset",
    "remotedisconnected", "failed to establish a new connection", "timed out", "timeout exception",
    "temporary failure in name resolution", "name or service not known", "nodename nor servname",
    "database is locked", "unable to open database file", "disk i/o error", "could not connect to server",
    "server closed the connection", "lost connection", "can't connect", "too many 50",
    "service unavailable", "bad gateway", "gateway timeout",
)
_OUTAGE_CODES = ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED")
_OUTAGE_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
                  errno.ENETUNREACH, errno.ETIMEDOUT, errno.EPIPE}


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_outage(exc: BaseException) -> bool:
    """True when `exc` says the store could not be reached or could not answer for now (keep the
    call and try again); False when the store answered and refused the call."""
    import requests
    import urllib3

    for error in _chain(exc):
        if isinstance(error, (ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout,
                              requests.exceptions.RetryError, urllib3.exceptions.HTTPError)):
            return True
        if isinstance(error, OSError) and error.errno in _OUTAGE_ERRNOS:
            return True
        if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
            return True
        if isinstance(error, MlflowException) and error.error_code in _OUTAGE_CODES:
            return True
        text = str(error).lower()
        if any(word in text for word in _OUTAGE_WORDS):
            return True
    return False


def outage_reason(exc: BaseException) -> str:
    """The heart of an outage error in a few words ('[Errno 111] Connection refused', 'HTTP 503
    responses', 'database is locked'), not MLflow's whole wrapped message."""
    from mixvae.tracking.connection import short_reason

    text = str(exc)
    for pattern, shown in ((r"\[Errno -?\d+\] [^'\")]+", None), (r"too many (\d+) error responses", "HTTP {} responses"),
                           (r"database is locked", None), (r"timed out", None)):
        match = re.search(pattern, text)
        if match:
            return shown.format(match.group(1)) if shown else match.group(0).strip()
    return short_reason(exc, 160)
