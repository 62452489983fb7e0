"""Checkpoints: pure-dictionary state in ``state.msgpack`` plus ``meta.json``.

``last`` holds everything needed to resume (model, optimiser, τ counts, curriculum, epoch, step,
early-stopping state, best snapshot, history); ``best`` holds what the best epoch restores. Arrays are
stored by their pytree leaves; the tree structure comes back from a freshly built state, so nothing is
pickled.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization


def _leaves(tree) -> dict[str, np.ndarray]:
    return {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree_util.tree_leaves(tree))}


def _unleaves(template, stored: dict) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten(template)
    if len(stored) != len(leaves):
        raise ValueError(f"checkpoint holds {len(stored)} arrays, the model expects {len(leaves)}")
    restored = []
    for i, ref in enumerate(leaves):
        arr = np.asarray(stored[str(i)])
        if arr.shape != np.shape(ref):
            raise ValueError(f"checkpoint array {i} has shape {arr.shape}, expected {np.shape(ref)}")
        restored.append(arr.astype(np.asarray(ref).dtype))
    return jax.tree_util.tree_unflatten(treedef, restored)


def save(directory: Path, arrays: dict[str, Any], host: dict, meta: dict) -> Path:
    """Write ``state.msgpack`` (pytrees by leaves + a JSON blob of host state) and ``meta.json`` atomically."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    payload = {name: _leaves(tree) for name, tree in arrays.items()}
    payload["host_json"] = json.dumps(host)
    (tmp / "state.msgpack").write_bytes(serialization.msgpack_serialize(payload))
    meta = dict(meta, saved_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        os.replace(directory, old)
        os.replace(tmp, directory)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        os.replace(tmp, directory)
    return directory


def load(directory: Path, templates: dict[str, Any]) -> tuple[dict[str, Any], dict, dict]:
    """→ (restored pytrees shaped like ``templates``, host state, meta)."""
    directory = Path(directory)
    payload = serialization.msgpack_restore((directory / "state.msgpack").read_bytes())
    meta = json.loads((directory / "meta.json").read_text())
    host = json.loads(payload.pop("host_json"))
    arrays = {name: _unleaves(tpl, payload[name]) for name, tpl in templates.items() if name in payload}
    return arrays, host, meta
