"""The seam between the trainer and a tracking backend.

The trainer only sees `RunWriter`. `MlflowWriter` (mixvae/tracking/mlflow_writer.py) sends everything
to MLflow from one worker thread; `MemoryWriter` keeps everything in memory for tests and notebooks.
This module does not import mlflow.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from mixvae.tracking_uri import redact

RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")
FINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
STATUS_REASON_TAG = "mixvae.status_reason"


class TrackingError(RuntimeError):
    """The tracking store failed or could not be reached (exit 1 at the CLI).

    Its message is printed and may become a run's status reason, so credentials in it (a URI's
    password, the value of MLFLOW_TRACKING_PASSWORD) are replaced by *** here, once for every caller."""

    def __init__(self, message: object = "", *args: object):
        super().__init__(redact(str(message)), *args)


class RunNotFound(LookupError):
    """No run, or more than one run, matches a run id or prefix (exit 2 at the CLI)."""


@runtime_checkable
class RunWriter(Protocol):
    """What the trainer may do with a run. Every method except `check`, `flush`, `set_status`
    and `download_artifact` may return before the work is done."""

    run_id: str
    artifact_uri: str
    error: str | None

    def log_params(self, params: Mapping[str, str]) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None: ...
    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None: ...
    def log_artifacts(self, local_dir: str | Path, artifact_dir: str | None = None) -> None: ...
    def log_inputs(self, records: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None: ...
    def check(self) -> None: ...
    def flush(self, timeout: float | None = None) -> bool: ...
    def set_status(
        self, status: str, reason: str | None = None, flush_timeout: float | None = None
    ) -> bool: ...
    def download_artifact(self, path: str, dst: str | Path) -> Path | None: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# Checks shared by both writers


def check_param_keys(params: Mapping[str, str]) -> dict[str, str]:
    """Params are dotted config keys with JSON-text values; mixvae never logs an undotted param
    (MLproject parameters are undotted, so the two never collide)."""
    undotted = sorted(key for key in params if "." not in key)
    if undotted:
        raise ValueError(f"param keys must contain a dot (got {', '.join(undotted)})")
    not_text = sorted(key for key, value in params.items() if not isinstance(value, str))
    if not_text:
        raise ValueError(f"param values must be JSON text (str); not for {', '.join(not_text)}")
    return dict(params)


def as_float_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Host-side Python floats: device arrays and NumPy scalars never reach the backend."""
    return {str(key): float(value) for key, value in metrics.items()}


def check_status(status: str) -> str:
    if status not in FINAL_STATUSES:
        raise ValueError(f"status must be one of {', '.join(FINAL_STATUSES)} (got {status!r})")
    return status


def normalise_records(records: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> list[dict]:
    """Dataset records ({name, features, targets, source, context}) from one record, a list of
    them, or `mixvae.data.dataset_record(ds)` (records keyed by context)."""
    if isinstance(records, Mapping):
        records = [records] if "features" in records else list(records.values())
    out = []
    for record in records:
        missing = {"name", "features", "context"} - set(record)
        if missing:
            raise ValueError(f"dataset record lacks {', '.join(sorted(missing))}")
        out.append(dict(record))
    return out


def join_artifact_path(artifact_dir: str | None, name: str) -> str:
    return f"{artifact_dir.strip('/')}/{name}" if artifact_dir else name


# ---------------------------------------------------------------------------------------------


class MemoryWriter:
    """A `RunWriter` that keeps everything in memory; artifacts are copied into a directory.

    Attributes after a run: `params`, `tags`, `epochs` ({step: {key: value}}, a re-logged step
    keeps the latest values), `epoch_calls` (one (step, metrics) entry per `log_epoch` call),
    `summary`, `inputs`, `status`, `status_reason`, `artifact_root` (a directory holding the
    artifacts under their artifact paths), `artifacts` (sorted relative paths).
    """

    def __init__(self, run_id: str | None = None, artifact_root: str | Path | None = None):
        self.run_id = run_id or uuid.uuid4().hex
        root = Path(artifact_root) if artifact_root else Path(tempfile.mkdtemp(prefix="mixvae-"))
        root.mkdir(parents=True, exist_ok=True)
        self.artifact_root = root
        self.artifact_uri = str(root)
        self.error: str | None = None
        self.params: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.epochs: dict[int, dict[str, float]] = {}
        self.epoch_calls: list[tuple[int, dict[str, float]]] = []
        self.summary: dict[str, float] = {}
        self.inputs: list[dict] = []
        self.status = "RUNNING"
        self.status_reason: str | None = None
        self.start_time = int(time.time() * 1000)
        self.end_time: int | None = None
        self.closed = False

    # -- logging ---------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, str]) -> None:
        params = check_param_keys(params)
        changed = sorted(k for k, v in params.items() if k in self.params and self.params[k] != v)
        if changed:
            raise ValueError(f"params cannot change once logged: {', '.join(changed)}")
        self.params.update(params)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update({str(k): str(v) for k, v in tags.items()})

    def log_epoch(self, step: int, metrics: Mapping[str, float]) -> None:
        values = as_float_metrics(metrics)
        self.epoch_calls.append((int(step), values))
        self.epochs.setdefault(int(step), {}).update(values)

    def log_summary(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.summary.update(as_float_metrics(metrics))

    def log_artifact(self, local_path: str | Path, artifact_dir: str | None = None) -> None:
        source = Path(local_path)
        target = self.artifact_root / join_artifact_path(artifact_dir, source.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)

    def log_artifacts(self, local_dir: str | Path, artifact_dir: str | None = None) -> None:
        target = self.artifact_root / artifact_dir.strip("/") if artifact_dir else self.artifact_root
        shutil.copytree(Path(local_dir), target, dirs_exist_ok=True)

    def log_inputs(self, records: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> None:
        self.inputs.extend(normalise_records(records))

    # -- lifecycle -------------------------------------------------------------------------

    def check(self) -> None:
        if self.error is not None:
            raise TrackingError(f"tracking failure: {self.error}")

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def set_status(
        self, status: str, reason: str | None = None, flush_timeout: float | None = None
    ) -> bool:
        self.status = check_status(status)
        if reason:
            self.status_reason = reason
            self.tags[STATUS_REASON_TAG] = reason
        self.end_time = int(time.time() * 1000)
        return True

    def close(self) -> None:
        self.closed = True

    # -- reading back ----------------------------------------------------------------------

    @property
    def artifacts(self) -> list[str]:
        return sorted(
            p.relative_to(self.artifact_root).as_posix()
            for p in self.artifact_root.rglob("*")
            if p.is_file()
        )

    def download_artifact(self, path: str, dst: str | Path) -> Path | None:
        source = self.artifact_root / path.strip("/")
        if not source.exists():
            return None
        target = Path(dst) / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        return target

    def histories(self) -> dict[str, list[tuple[int, float]]]:
        """The per-epoch values as `RunRecord.histories` holds them."""
        out: dict[str, list[tuple[int, float]]] = {}
        for step in sorted(self.epochs):
            for key, value in self.epochs[step].items():
                out.setdefault(key, []).append((step, value))
        return out
