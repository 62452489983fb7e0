"""The logged mixvae model, as MLflow models-from-code.

MLflow executes this file by path when it loads the model; it ends in
`mlflow.models.set_model(MixvaeModel())`, so nothing is pickled. It imports only the config and
model modules and their dependencies — never click (beyond what mlflow itself imports),
matplotlib, seaborn or scikit-learn — so that serving needs only the pinned runtime packages.

Artifacts (names as logged by `mixvae.tracking.model_logging.log_model`):
  weights    best-epoch state, msgpack (`mixvae.model.weights.save_weights`)
  config     the run's resolved config.yaml
  data_meta  data_meta.json: H, W, Ch, scale_used, K, C, columns ([name, "long"|"double"])
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import mlflow
import numpy as np
import pandas as pd
import yaml
from flax import nnx
from mlflow.exceptions import MlflowException

from mixvae.config import config_from_dict
from mixvae.model.inference import predict_arrays
from mixvae.model.weights import load_weights

CHUNK = 256  # images per compiled call; the last chunk is padded, so there is one compilation
DTYPES = {"long": np.int64, "double": np.float64}


class MixvaeModel(mlflow.pyfunc.PythonModel):
    """Images in, per-image responsibilities, component, label, OOD score and reconstruction
    error out (one row per image, columns as in data_meta.json)."""

    def load_context(self, context) -> None:
        artifacts = context.artifacts
        meta = json.loads(Path(artifacts["data_meta"]).read_text())
        cfg = config_from_dict(yaml.safe_load(Path(artifacts["config"]).read_text()))
        self.image_shape = (int(meta["H"]), int(meta["W"]), int(meta["Ch"]))
        self.columns = [(str(name), str(kind)) for name, kind in meta.get("columns", [])]
        model, tau_counts, active_mask = load_weights(artifacts["weights"], cfg, self.image_shape)
        self.active_mask = None if active_mask is None else jnp.asarray(active_mask)
        self.tau_counts = None if tau_counts is None else jnp.asarray(tau_counts)
        graphdef, state = nnx.split(model)
        self.state = state

        def evaluate(state, images, active_mask, tau_counts):
            return predict_arrays(nnx.merge(graphdef, state), images, active_mask, tau_counts, cfg)

        self._evaluate = jax.jit(evaluate)

    # -- input -----------------------------------------------------------------------------

    def _expected(self) -> str:
        h, w, ch = self.image_shape
        also = f" or (-1, {h}, {w})" if ch == 1 else ""
        return f"(-1, {h}, {w}, {ch}){also}"

    def _as_images(self, model_input) -> np.ndarray:
        """float32 [N, H, W, Ch] from an array, a nested list, or a DataFrame (one column of
        images or one row of H·W·Ch pixels per image)."""
        h, w, ch = self.image_shape
        if isinstance(model_input, pd.DataFrame):
            if model_input.shape[1] == 1 and model_input.dtypes.iloc[0] == object:
                model_input = np.stack([np.asarray(v) for v in model_input.iloc[:, 0]])
            else:
                model_input = model_input.to_numpy()
        elif isinstance(model_input, dict) and len(model_input) == 1:
            model_input = next(iter(model_input.values()))
        try:
            images = np.asarray(model_input, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise MlflowException.invalid_parameter_value(
                f"expected images of shape {self._expected()}, float32; "
                f"the input could not be read as an array: {exc}"
            ) from exc
        if images.ndim == 2 and images.shape[1] == h * w * ch:
            images = images.reshape(-1, h, w, ch)
        if images.ndim == 3 and ch == 1 and images.shape[1:] == (h, w):
            images = images[..., None]
        if images.ndim != 4 or images.shape[1:] != (h, w, ch):
            raise MlflowException.invalid_parameter_value(
                f"expected images of shape {self._expected()}, float32 on the scale used in "
                f"training; got shape {tuple(images.shape)}"
            )
        return images

    # -- prediction ------------------------------------------------------------------------

    def _predict_arrays(self, images: np.ndarray) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), CHUNK):
            chunk = images[start : start + CHUNK]
            n = len(chunk)
            if n < CHUNK:
                chunk = np.concatenate([chunk, np.zeros((CHUNK - n, *chunk.shape[1:]), np.float32)])
            out = self._evaluate(self.state, jnp.asarray(chunk), self.active_mask, self.tau_counts)
            for key, value in out.items():
                parts.setdefault(key, []).append(np.asarray(value)[:n])
        return {key: np.concatenate(chunks) for key, chunks in parts.items()}

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        images = self._as_images(model_input)
        if len(images) == 0:
            return pd.DataFrame({name: np.array([], DTYPES[kind]) for name, kind in self.columns})
        outputs = self._predict_arrays(images)
        columns = self.columns or default_columns(outputs)
        table: dict[str, np.ndarray] = {}
        responsibilities = outputs.get("responsibilities")
        if responsibilities is not None and self.active_mask is not None:
            # r_k = 0 for components closed at the best epoch
            responsibilities = np.where(np.asarray(self.active_mask)[None, :], responsibilities, 0.0)
        for name, kind in columns:
            if name.startswith("responsibility_"):
                values = None if responsibilities is None else responsibilities[:, int(name[15:])]
            else:
                values = outputs.get(name)
            if values is None:
                raise MlflowException(
                    f"the model produced no '{name}' values (outputs: {', '.join(sorted(outputs))})"
                )
            table[name] = np.asarray(values, dtype=DTYPES[kind])
        return pd.DataFrame(table, columns=[name for name, _ in columns])


def default_columns(outputs: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """The served column order for whichever outputs exist."""
    columns: list[tuple[str, str]] = []
    if "component" in outputs:
        columns.append(("component", "long"))
    if "responsibilities" in outputs:
        k = np.asarray(outputs["responsibilities"]).shape[1]
        columns += [(f"responsibility_{i}", "double") for i in range(k)]
    for name, kind in (("predicted_label", "long"), ("certainty", "double"),
                       ("ood_score", "double"), ("reconstruction_error", "double")):
        if name in outputs:
            columns.append((name, kind))
    return columns


mlflow.models.set_model(MixvaeModel())
