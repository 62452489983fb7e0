"""Checkpoints: the ``last`` one resumes a run exactly, the ``best`` one holds what the best epoch restores.

On disk a checkpoint is ``state.msgpack`` (pytrees stored by their leaves, plus a JSON blob of host
state) and ``meta.json``. ``last`` holds the model, the optimiser, the τ counts, the random root key,
the best snapshot and the loop's ``HostState`` (epoch, steps, early stopping, curriculum, history);
``best`` holds the best epoch's parameters, τ counts and active mask. The tree structure comes back
from a freshly built state, so nothing is pickled.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from mixvae.train.curriculum import Curriculum
from mixvae.train.diagnostics import history_from_host, history_to_host, new_history
from mixvae.train.early_stopping import BestSnapshot, EarlyStopping
from mixvae.train.step import TrainState


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
        shutil.rmtree(old, ignore_errors=True)  # left behind by a process killed between the two renames
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


# --- the run's checkpoints ---------------------------------------------------------------------------

@dataclass
class HostState:
    """What the loop carries from epoch to epoch besides device arrays."""
    curriculum: Curriculum
    stopper: EarlyStopping
    epoch: int = 0                    # epochs completed
    steps_done: int = 0               # optimiser steps completed
    epoch_time_inside: float = 0.0    # seconds inside the compiled epoch function (for steps per second)
    kick_epochs_total: int = 0
    history: dict = field(default_factory=new_history)    # per-epoch arrays of history.npz
    metric_history: list = field(default_factory=list)    # every epoch's logged metrics

    @classmethod
    def from_config(cls, cfg) -> "HostState":
        return cls(curriculum=Curriculum.from_config(cfg), stopper=EarlyStopping.from_config(cfg))

    def to_json(self, best: BestSnapshot | None, config_yaml: str) -> dict:
        best_k_active = int(best.active_mask.sum()) if best is not None else self.curriculum.k_active
        return {"epoch": self.epoch, "steps_done": self.steps_done, **self.stopper.to_host(),
                "curriculum": self.curriculum.to_dict(), "history": history_to_host(self.history),
                "metric_history": self.metric_history, "kick_epochs_total": self.kick_epochs_total,
                "best_k_active": best_k_active, "epoch_time_inside": self.epoch_time_inside,
                "config_yaml": config_yaml}

    def restore(self, host: dict) -> None:
        self.epoch, self.steps_done = host["epoch"], host["steps_done"]
        self.stopper.restore(host)
        self.curriculum = Curriculum.from_dict(host["curriculum"])
        self.history = history_from_host(host["history"])
        self.metric_history = host["metric_history"]
        self.kick_epochs_total = host["kick_epochs_total"]
        self.epoch_time_inside = host.get("epoch_time_inside", 0.0)


def save_last(directory: Path, state: TrainState, root_key, best: BestSnapshot | None, host: HostState,
              config_yaml: str, meta: dict) -> None:
    arrays = {"params": state.params, "opt_state": state.opt_state, "tau_counts": state.tau_counts,
              "root_key": root_key}
    if best is not None:
        arrays.update(best_params=best.params, best_tau_counts=best.tau_counts, best_active_mask=best.active_mask)
    save(directory, arrays, host.to_json(best, config_yaml), meta)


def save_best(directory: Path, best: BestSnapshot, stopper: EarlyStopping, meta: dict) -> None:
    arrays = {"params": best.params, "tau_counts": best.tau_counts, "active_mask": best.active_mask}
    best_value = stopper.to_host()["best_value"]
    host = {"best_epoch": stopper.best_epoch, "monitor": stopper.monitor, "monitor_value": best_value}
    save(directory, arrays, host, meta)


def load_last(directory: Path, state: TrainState, host: HostState) -> tuple[TrainState, BestSnapshot | None]:
    """Resume: the ``last`` checkpoint back into ``host`` (in place); → (training state, best snapshot)."""
    k = host.curriculum.num_components
    templates = {"params": state.params, "opt_state": state.opt_state, "tau_counts": state.tau_counts,
                 "best_params": state.params, "best_tau_counts": state.tau_counts,
                 "best_active_mask": np.zeros(k, np.float32)}
    arrays, stored, _ = load(directory, templates)
    host.restore(stored)
    state = TrainState(params=jax.tree.map(jnp.asarray, arrays["params"]),
                       opt_state=jax.tree.map(jnp.asarray, arrays["opt_state"]),
                       tau_counts=jnp.asarray(arrays["tau_counts"]),
                       step=jnp.asarray(stored["steps_done"], jnp.int32))
    best = None
    if "best_params" in arrays:
        best = BestSnapshot(arrays["best_params"], arrays["best_tau_counts"], arrays["best_active_mask"])
    return state, best
