"""Saving and restoring model weights with τ counts and the active mask.

Format: the pure-dictionary NNX state (nnx.to_pure_dict) plus τ counts and the active mask, serialised
with flax.serialization.msgpack_serialize. Restoring goes through an abstract model built with
nnx.eval_shape, so no parameters are initialised only to be overwritten.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, serialization

from mixvae.model.mixvae import MixVAE

FORMAT_VERSION = 1


def weights_payload(model: MixVAE, tau_counts, active_mask) -> dict:
    """The pure dict that save_weights serialises (host numpy arrays)."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model": jax.device_get(nnx.to_pure_dict(nnx.state(model))),
        "active_mask": np.asarray(jax.device_get(active_mask), np.float32),
    }
    if tau_counts is not None:
        payload["tau_counts"] = np.asarray(jax.device_get(tau_counts), np.float32)
    return payload


def save_weights(path, model: MixVAE, tau_counts, active_mask) -> Path:
    """Write the model state, τ counts (or none) and active mask to ``path`` (msgpack); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.msgpack_serialize(weights_payload(model, tau_counts, active_mask)))
    return path


def _flat(tree: dict, prefix: tuple = ()) -> dict[tuple, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out


def _path(keys: tuple) -> str:
    return ".".join(str(k) for k in keys)


def restore_model(payload_model: dict, cfg, image_shape) -> MixVAE:
    """A MixVAE with the given pure-dict state, built from an abstract (eval_shape) model."""
    abstract = nnx.eval_shape(lambda: MixVAE(cfg, tuple(image_shape), rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    expected, saved = _flat(nnx.to_pure_dict(state)), _flat(payload_model)
    problems = [f"missing {_path(k)}" for k in expected if k not in saved]
    problems += [f"unexpected {_path(k)}" for k in saved if k not in expected]
    problems += [f"{_path(k)} has shape {tuple(np.shape(saved[k]))}, expected {tuple(v.shape)}"
                 for k, v in expected.items() if k in saved and tuple(np.shape(saved[k])) != tuple(v.shape)]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … ({len(problems)} problems)" if len(problems) > 5 else "")
        raise ValueError(f"the saved weights do not fit a model built from this config: {shown}")
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map(jnp.asarray, payload_model))
    return nnx.merge(graphdef, state)


def load_weights(path, cfg, image_shape) -> tuple[MixVAE, jax.Array | None, jax.Array]:
    """→ (model, τ counts or None, active mask) from a file written by save_weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    payload = serialization.msgpack_restore(path.read_bytes())
    if "model" not in payload or "active_mask" not in payload:
        raise ValueError(f"{path} is not a mixvae weights file (missing 'model' or 'active_mask')")
    model = restore_model(payload["model"], cfg, image_shape)
    tau_counts = jnp.asarray(payload["tau_counts"]) if "tau_counts" in payload else None
    return model, tau_counts, jnp.asarray(payload["active_mask"])
