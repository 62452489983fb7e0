"""A run's artifacts outside the training loop: whether one exists, downloading one, and uploading
a finished folder or a few files (the reports)."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mixvae.tracking.connection import connect, short_reason
from mixvae.tracking.writer import TrackingError
from mixvae.tracking_uri import resolve_tracking_uri


def artifact_exists(client: MlflowClient, run_id: str, path: str) -> bool:
    """True when `path` (file or directory) is among the run's artifacts."""
    path = path.strip("/")
    parent = path.rsplit("/", 1)[0] if "/" in path else None
    return any(info.path == path for info in client.list_artifacts(run_id, parent))


def download_artifact(client: MlflowClient, run_id: str, path: str, dst: str | Path) -> Path | None:
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


def upload_dir(run_id: str, local_dir: str | Path, artifact_path: str | None = None,
               uri: str | None = None) -> None:
    """Log every file under `local_dir` to the run under `artifact_path` (same relative paths,
    replacing earlier versions); used by the report. Raises TrackingError."""
    client = connect(uri or resolve_tracking_uri(None, None)[0])
    try:
        client.log_artifacts(run_id, str(local_dir), artifact_path)
    except Exception as exc:
        raise TrackingError(f"tracking failure: upload of {local_dir} failed: {short_reason(exc)}") from exc


def upload_files(run_id: str, paths: list[Path], uri: str | None = None) -> None:
    """Log each file to the run's artifact root and each folder under its own name (the sweep report:
    REPORT.md, REPORT.html, figures/, and nothing else that lies beside them). Raises TrackingError."""
    client = connect(uri or resolve_tracking_uri(None, None)[0])
    for path in map(Path, paths):
        try:
            if path.is_dir():
                client.log_artifacts(run_id, str(path), path.name)
            elif path.is_file():
                client.log_artifact(run_id, str(path))
        except Exception as exc:
            raise TrackingError(f"tracking failure: upload of {path} failed: {short_reason(exc)}") from exc
