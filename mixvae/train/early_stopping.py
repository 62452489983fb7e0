"""Early stopping: the monitored validation key, its best value and epoch, the patience count, and the
snapshot of the best epoch that the end of the run restores.

An epoch is the new best when its monitor value improves on the best by more than ``min_delta``
(the one improvement rule, ``metrics.keys.improves``); the first completed epoch is always the best
so far. Training stops once ``patience`` epochs in a row brought no improvement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from mixvae.metrics import keys as mk


@dataclass
class BestSnapshot:
    """Host copies of the best epoch's parameters, τ counts and active mask."""
    params: Any
    tau_counts: np.ndarray
    active_mask: np.ndarray

    @classmethod
    def take(cls, state, active_mask: np.ndarray) -> "BestSnapshot":
        """An explicit copy: the live device buffers are donated to the next epoch."""
        return cls(params=jax.tree.map(np.array, jax.device_get(state.params)),
                   tau_counts=np.array(state.tau_counts), active_mask=np.array(active_mask))


@dataclass
class EarlyStopping:
    monitor: str                  # a logged key, e.g. 'val/loss.total'
    mode: str                     # 'min' or 'max'
    min_delta: float
    patience: int | None          # None: never stop early
    best_value: float | None = None  # None: the worst value of the mode
    best_epoch: int = 0           # 0 until an epoch completed
    wait: int = 0                 # epochs since the last improvement

    def __post_init__(self):
        if self.best_value is None:
            self.best_value = self.worst()

    @classmethod
    def from_config(cls, cfg) -> "EarlyStopping":
        t = cfg.training
        mode = mk.direction(t.monitor) if t.monitor_mode == "auto" else t.monitor_mode
        return cls(monitor=t.monitor, mode=mode, min_delta=t.min_delta, patience=t.patience)

    def worst(self) -> float:
        """The starting best value: every finite value improves on it."""
        return math.inf if self.mode == "min" else -math.inf

    def value_of(self, val_metrics: dict[str, float]) -> float:
        """The monitored value among an epoch's validation metrics (NaN when missing)."""
        return val_metrics.get(self.monitor.split("/", 1)[1], math.nan)

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s monitor value; True when it is the new best."""
        if mk.improves(value, self.best_value, self.mode, self.min_delta) or self.best_epoch == 0:
            self.best_value, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        return False

    def restart_patience(self) -> None:
        """A newly opened component changes the model: patience counts again from zero."""
        self.wait = 0

    def should_stop(self) -> bool:
        return self.patience is not None and self.wait >= self.patience

    def stop_message(self, epoch: int) -> str:
        return (f"early stop at epoch {epoch}: {self.monitor} did not improve by more than "
                f"{self.min_delta:g} for {self.patience} epochs; restored epoch {self.best_epoch}")

    # --- checkpointing -------------------------------------------------------------------------------

    def to_host(self) -> dict:
        """The fields the ``last`` checkpoint keeps (a non-finite best is stored as null)."""
        finite = self.best_value if math.isfinite(self.best_value) else None
        return {"best_value": finite, "best_epoch": self.best_epoch, "wait": self.wait}

    def restore(self, host: dict) -> None:
        best = host["best_value"]
        self.best_value = best if best is not None else self.worst()
        self.best_epoch, self.wait = host["best_epoch"], host["wait"]
