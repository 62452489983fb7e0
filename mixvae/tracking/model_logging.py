"""Logging the trained model as an MLflow LoggedModel, and registering it."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, Schema, TensorSpec

from mixvae.tracking.connection import connect, short_reason
from mixvae.tracking_uri import resolve_tracking_uri
from mixvae.tracking.writer import TrackingError

PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_model.py")
MIXVAE_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # shipped as code_paths
PINNED_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "pandas", "pyyaml", "pydantic", "mlflow")
REGISTERED_MODEL_TAG = "mixvae.registered_model"

# prediction key of `mixvae.model.inference.predict_arrays` -> column type
_SCALAR_OUTPUTS = (
    ("component", "long"),
    ("predicted_label", "long"),
    ("certainty", "double"),
    ("ood_score", "double"),
    ("reconstruction_error", "double"),
)


def pip_requirements() -> list[str]:
    """Exact pins of the serving dependencies, read from the installed distributions (equal to
    pyproject's pins in an environment installed from it). Requirement inference is never used."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in PINNED_PACKAGES]


def output_columns(prediction_keys: Iterable[str], num_components: int) -> list[list[str]]:
    """[[name, "long"|"double"]] in the served column order for the keys `predict_arrays`
    returns: component, responsibility_0…K−1, predicted_label, certainty, ood_score,
    reconstruction_error."""
    keys = set(prediction_keys)
    columns: list[list[str]] = []
    for name, kind in _SCALAR_OUTPUTS:
        if name in keys:
            columns.append([name, kind])
        if name == "component" and "responsibilities" in keys:
            columns += [[f"responsibility_{k}", "double"] for k in range(num_components)]
    return columns


def make_data_meta(
    *,
    image_shape: Sequence[int],
    scale_used: float,
    num_components: int,
    num_classes: int,
    prediction_keys: Iterable[str],
) -> dict:
    """The `data_meta.json` artifact of the logged model."""
    h, w, ch = (int(v) for v in image_shape)
    return {
        "H": h,
        "W": w,
        "Ch": ch,
        "scale_used": float(scale_used),
        "K": int(num_components),
        "C": int(num_classes),
        "columns": output_columns(prediction_keys, num_components),
    }


class _PyfuncFlavor:
    """`mlflow.pyfunc` as the flavor of `Model.log`, whose `save_model` also accepts the
    `validate_serving_input` flag: `Model.log` reads that flag from the keyword arguments it hands on
    to the flavor, and `mlflow.pyfunc.save_model` refuses any it does not know."""

    @staticmethod
    def save_model(*, validate_serving_input: bool = True, **kwargs):
        return mlflow.pyfunc.save_model(**kwargs)


@contextlib.contextmanager
def _no_distribution_scan():
    """While the model is saved, MLflow checks each pinned requirement against the installed version,
    and before that maps every installed distribution to its modules (a scan of them all, about 0.3 s)
    only to know which module to import where a distribution's version cannot be read. Every pin here
    was read from an installed distribution (`pip_requirements`), so for the save that map is empty."""
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", ()) is not None:
        yield                                     # already built (or MLflow changed): nothing to skip
        return
    requirements_utils._MODULES_TO_PACKAGES = {}
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None


def model_signature(data_meta: dict) -> ModelSignature:
    """Input TensorSpec(float32, (−1, H, W, Ch)); output one column per data_meta column."""
    shape = (-1, int(data_meta["H"]), int(data_meta["W"]), int(data_meta["Ch"]))
    inputs = Schema([TensorSpec(np.dtype(np.float32), shape)])
    outputs = Schema([ColSpec(kind, name) for name, kind in data_meta["columns"]])
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_model(
    run_id: str,
    *,
    weights_path: str | Path,
    config_yaml_path: str | Path,
    data_meta: dict,
    input_example: np.ndarray,
    signature: ModelSignature | None = None,
    uri: str | None = None,
    name: str = "model",
    step: int = 0,
) -> str:
    """Log the model of run `run_id` as models-from-code; returns `models:/m-<id>`.

    This is what `mlflow.pyfunc.log_model(name="model", python_model=<path>, …)` does, called
    through `Model.log` with an explicit `run_id` (no active fluent run is needed) and without
    MLflow's serving-input check (it would load the model, compile it and predict the input example
    once more; tests/test_pyfunc.py loads and serves the logged model). The run's metrics at `step`
    (the summary, logged at step 0) are linked to the model.
    Raises TrackingError."""
    uri = uri or resolve_tracking_uri(None, None)[0]
    connect(uri)
    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory(prefix="mixvae-model-") as tmp:
        meta_path = Path(tmp) / "data_meta.json"
        meta_path.write_text(json.dumps(data_meta, indent=2, sort_keys=True))
        try:
            with _no_distribution_scan():
                info = Model.log(
                    artifact_path=None,
                    name=name,
                    flavor=_PyfuncFlavor,
                    flavor_name="pyfunc.ModelFromCode",
                    run_id=run_id,
                    step=step,
                    python_model=str(PYFUNC_MODEL_FILE),
                    artifacts={
                        "weights": str(weights_path),
                        "config": str(config_yaml_path),
                        "data_meta": str(meta_path),
                    },
                    code_paths=[str(MIXVAE_PACKAGE_DIR)],
                    pip_requirements=pip_requirements(),
                    signature=signature or model_signature(data_meta),
                    input_example=np.asarray(input_example, dtype=np.float32),
                    validate_serving_input=False,
                )
        except Exception as exc:
            raise TrackingError(f"model logging failed: {short_reason(exc)}") from exc
    return f"models:/{info.model_id}"


def register(
    model_uri: str, name: str, alias: str, run_id: str | None = None, uri: str | None = None
) -> str:
    """Register `model_uri` as a new version of `name`, point `alias` at it, and tag the run
    `mixvae.registered_model=<name>/<version>@<alias>`. Returns the version. Raises
    TrackingError."""
    uri = uri or resolve_tracking_uri(None, None)[0]
    client = connect(uri)
    mlflow.set_tracking_uri(uri)
    try:
        version = str(mlflow.register_model(model_uri, name).version)
        client.set_registered_model_alias(name, alias, version)
        if run_id is None and model_uri.startswith("models:/m-"):
            run_id = client.get_logged_model(model_uri.removeprefix("models:/")).source_run_id
        if run_id:
            client.set_tag(run_id, REGISTERED_MODEL_TAG, f"{name}/{version}@{alias}")
    except Exception as exc:
        raise TrackingError(f"model registration failed: {short_reason(exc)}") from exc
    return version


def registered_model_uri(name: str, alias: str) -> str:
    return f"models:/{name}@{alias}"


__all__ = [
    "PINNED_PACKAGES",
    "PYFUNC_MODEL_FILE",
    "log_model",
    "make_data_meta",
    "model_signature",
    "output_columns",
    "pip_requirements",
    "register",
    "registered_model_uri",
]
