"""Runs that are not training runs: `mlflow run -e validate|report|compare` entry points, and the
read side of `mixvae train --resume`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mixvae.tracking.artifacts import download_artifact, upload_files
from mixvae.tracking.connection import connect
from mixvae.tracking.record import resolve_run_id
from mixvae.tracking.writer import TrackingError
from mixvae.tracking_uri import redact_uri, resolve_tracking_uri

log = logging.getLogger(__name__)


def log_validation_run(run_id: str, *, config_yaml: str | None, input_text: str | None, validation: dict) -> None:
    """Under `mlflow run -e validate`: config, input config and validation.json on the entry point's run."""
    client = connect(resolve_tracking_uri(None, None)[0])
    if config_yaml is not None:
        client.log_text(run_id, config_yaml, "config.yaml")
    if input_text is not None:
        client.log_text(run_id, redact_uri(input_text), "config.input.yaml")
    client.log_text(run_id, json.dumps(validation, indent=2, sort_keys=True), "validation.json")
    client.set_tag(run_id, "mixvae.kind", "validate")
    client.set_terminated(run_id, "FINISHED" if validation.get("valid") else "FAILED")


def log_entry_point_files(run_id: str, uri: str, paths: list[Path], *, kind: str,
                          extra_tags: dict[str, str] | None = None) -> None:
    """Under `mlflow run -e report|compare`: log the produced files to the entry point's own run
    (best effort: the files are already on disk, so a failed upload is only logged)."""
    for path in map(Path, paths):
        try:
            upload_files(run_id, [path], uri)
        except TrackingError as exc:
            log.warning("%s", exc)
    client = connect(uri)
    client.set_tag(run_id, "mixvae.kind", kind)
    for key, value in (extra_tags or {}).items():
        client.set_tag(run_id, key, value)


EPOCH_KEY = "val/loss.total"  # logged with every epoch, in the same batch as the epoch's other values


@dataclass
class ResumeInfo:
    run_id: str
    status: str
    config: str | None          # config.yaml text of the run
    config_name: str | None
    checkpoint_dir: Path | None  # local copy of checkpoints/last
    tags: dict[str, str] = field(default_factory=dict)
    logged_epochs: frozenset[int] = frozenset()  # epochs the run holds (some may be after the checkpoint)


def prepare_resume(run_ref: str, uri: str, workdir: Path) -> ResumeInfo:
    """Find the run, download config.yaml and checkpoints/last, note its tags and the epochs it
    already holds (RunNotFound / TrackingError on failure)."""
    client = connect(uri)
    run_id = resolve_run_id(client, run_ref)
    run = client.get_run(run_id)
    cfg_path = download_artifact(client, run_id, "config.yaml", workdir)
    ckpt = download_artifact(client, run_id, "checkpoints/last", workdir)
    if ckpt is not None and not (Path(ckpt) / "state.msgpack").exists():
        ckpt = None
    logged = frozenset(m.step for m in client.get_metric_history(run_id, EPOCH_KEY))
    return ResumeInfo(run_id=run_id, status=run.info.status,
                      config=Path(cfg_path).read_text() if cfg_path else None,
                      config_name=run.data.tags.get("mixvae.config_name"),
                      checkpoint_dir=Path(ckpt) if ckpt else None, tags=dict(run.data.tags), logged_epochs=logged)
