"""MLflow integration: the only package that imports mlflow.

Names are imported lazily, so `from mixvae.tracking import MemoryWriter` never imports mlflow.
The tracking URI's precedence and check live below this package, in `mixvae/tracking_uri.py`
(config validation uses them too).

- writer.py        RunWriter protocol, MemoryWriter, TrackingError, RunNotFound
- connection.py    connect (fails fast when the store does not answer), mixvae's MLflow settings
- store.py         a local sqlite store shared by processes: created once under a lock, busy waits
- mlflow_run.py    open_run: create or attach to a run (MLflow's own run and experiment rules)
- mlflow_writer.py MlflowWriter: the loop's MLflow calls, spooled, then made in order on one worker thread
- spool.py         the calls the store has not acknowledged, on local disk
- delivery.py      one spooled call: its form, making it, outage or refusal
- sync.py          `mixvae sync`: deliver a kept spool
- artifacts.py     download_artifact, upload_dir
- record.py        RunRecord, load_run, resolve_run_id
- sweep_record.py  SweepRecord, load_sweep: a sweep's parent run and its trial runs
- model_logging.py log_model (models-from-code), register, make_data_meta
- pyfunc_model.py  the file MLflow loads the model from
- listing.py       `mixvae runs`
- ownership.py     the host and process that own a run, its heartbeat, whether the owner is gone
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RunWriter": "writer",
    "MemoryWriter": "writer",
    "TrackingError": "writer",
    "RunNotFound": "writer",
    "open_run": "mlflow_run",
    "MlflowWriter": "mlflow_writer",
    "upload_dir": "artifacts",
    "connect": "connection",
    "prepare_mlflow": "connection",
    "RunRecord": "record",
    "load_run": "record",
    "resolve_run_id": "record",
    "SweepRecord": "sweep_record",
    "load_sweep": "sweep_record",
    "log_model": "model_logging",
    "register": "model_logging",
    "make_data_meta": "model_logging",
    "model_signature": "model_logging",
    "pip_requirements": "model_logging",
    "list_runs": "listing",
    "format_rows": "listing",
    "ListingError": "listing",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mixvae.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mixvae.tracking.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
