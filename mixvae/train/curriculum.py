"""Component curriculum: training starts with a few mixture components open and opens one more each
time the unlock monitor plateaus. Host-side decisions once per epoch; the device sees a mask array.

``Curriculum.plan(n)`` says how epoch n trains (mask, kick); ``Curriculum.observe(n, v)`` takes the
unlock monitor after the epoch's validation and decides about plateaus, unlocks, kicks and stops.
A plateau is judged by the one improvement rule (``metrics.keys.improves``). Everything it knows is
plain data, so it goes into the ``last`` checkpoint and resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mixvae.metrics.keys import improves


@dataclass
class EpochPlan:
    active_mask: np.ndarray   # [K] float32
    kick_bias: np.ndarray     # [K] float32
    kick: bool                # this epoch is a kick epoch
    unlocked: bool            # first epoch of a newly opened component
    k_active: int


@dataclass
class Curriculum:
    enabled: bool
    num_components: int
    k_active: int
    k_active_max: int
    patience: int = 5
    min_delta: float = 0.01
    cooldown: int = 2
    kick_enabled: bool = True
    kick_epochs: int = 3
    kick_bias_value: float = 0.0
    adaptation_epochs: int = 5
    min_improvement: float = 0.0
    # state
    phase: str = "normal"               # normal | kick | cooldown
    kick_left: int = 0
    cooldown_left: int = 0
    new_component: int = -1           # the component opened last (-1: none yet)
    best_u: float = math.inf
    wait_u: int = 0
    window: list | None = None          # [first epoch, last epoch, v_before, best inside]
    stopped: bool = False
    stop_reason: str = "none"
    unlocked_at: int = -1               # epoch from which the newest component is active
    events: list = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg) -> "Curriculum":
        c, k = cfg.curriculum, cfg.model.num_components
        if not c.enabled:
            return cls(enabled=False, num_components=k, k_active=k, k_active_max=k)
        cur = cls(enabled=True, num_components=k, k_active=c.k_active_init, k_active_max=c.k_active_max,
                  patience=c.unlock.patience, min_delta=c.unlock.min_delta, cooldown=c.unlock.cooldown,
                  kick_enabled=c.kick.enabled, kick_epochs=c.kick.epochs, kick_bias_value=c.kick.logit_bias,
                  adaptation_epochs=c.stop.adaptation_epochs, min_improvement=c.stop.min_improvement)
        if cur.k_active >= cur.k_active_max:
            cur._stop(1, "budget", None)
        return cur

    # --- per-epoch plan ----------------------------------------------------------------------------

    def mask(self) -> np.ndarray:
        m = np.zeros(self.num_components, np.float32)
        m[: self.k_active] = 1.0
        return m

    def plan(self, epoch: int) -> EpochPlan:
        bias = np.zeros(self.num_components, np.float32)
        kick = self.enabled and self.phase == "kick"
        if kick and self.new_component >= 0:
            bias[self.new_component] = self.kick_bias_value
        return EpochPlan(self.mask(), bias, kick, self.enabled and epoch == self.unlocked_at, self.k_active)

    # --- decisions after the epoch's validation -------------------------------------------------------

    def observe(self, epoch: int, value: float) -> list[dict]:
        """Update the plateau tracker, windows and phases after epoch n; returns the new events."""
        if not self.enabled:
            return []
        before = len(self.events)
        if self.phase == "kick":
            self.kick_left -= 1
            if self.kick_left <= 0:
                self._event(epoch, "kick_end", self.new_component, value, "")
                self.phase = "cooldown" if self.cooldown > 0 else "normal"
                self.cooldown_left = self.cooldown
                self._open_window(epoch + 1)
        elif self.phase == "cooldown":
            self.cooldown_left -= 1
            if self.cooldown_left <= 0:
                self.phase = "normal"
        else:  # plateau tracking only in normal epochs
            if improves(value, self.best_u, "min", self.min_delta):
                self.best_u, self.wait_u = value, 0
            else:
                self.wait_u += 1

        if self.window is not None:
            first, last, v_before, best = self.window
            if first <= epoch <= last:
                self.window[3] = min(best, value)
            if epoch >= last:
                paid_off = improves(self.window[3], v_before, "min", self.min_improvement)
                self.window = None
                if not paid_off and not self.stopped:
                    self._stop(epoch, "no_improvement", value)

        if (not self.stopped and self.phase == "normal" and self.window is None
                and self.wait_u >= self.patience):
            self._unlock(epoch + 1, value)
        return self.events[before:]

    def _unlock(self, epoch: int, value: float) -> None:
        component = self.k_active
        self.k_active += 1
        self.new_component = component
        self.unlocked_at = epoch
        v_before = self.best_u
        self.best_u, self.wait_u = math.inf, 0
        self._event(epoch, "unlock", component, value, "plateau")
        if self.kick_enabled:
            self.phase, self.kick_left = "kick", self.kick_epochs
            self.window = [math.inf, math.inf, v_before, math.inf]  # opens when the kick ends
        else:
            self.window = [epoch, epoch + self.adaptation_epochs - 1, v_before, math.inf]
        if self.k_active >= self.k_active_max:
            self._stop(epoch, "budget", value)

    def _open_window(self, first: int) -> None:
        if self.window is not None:
            self.window[0], self.window[1] = first, first + self.adaptation_epochs - 1

    def _stop(self, epoch: int, reason: str, value: float | None) -> None:
        self.stopped, self.stop_reason = True, reason
        self._event(epoch, "stop", None, value, reason)

    def _event(self, epoch, event, component, value, reason) -> None:
        self.events.append({"epoch": int(epoch), "event": event,
                            "component": None if component is None else int(component),
                            "k_active": int(self.k_active),
                            "monitor_value": None if value is None or not math.isfinite(value) else float(value),
                            "reason": reason})

    # --- checkpointing -----------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        return _json_safe(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Curriculum":
        d = dict(d)
        if "new_channel" in d:  # checkpoints written before the field was renamed
            d["new_component"] = d.pop("new_channel")
        for key in ("best_u",):
            if d.get(key) is None:
                d[key] = math.inf
        if d.get("window") is not None:
            d["window"] = [math.inf if v is None else v for v in d["window"]]
        return cls(**d)

    def describe(self, event: dict) -> str:
        component = event.get("component", event.get("channel"))  # older checkpoints say "channel"
        if event["event"] == "unlock":
            kick = f", kick for {self.kick_epochs} epochs" if self.kick_enabled else ""
            return f"epoch {event['epoch']}: unlock component {component} (k_active {event['k_active']}){kick}"
        if event["event"] == "kick_end":
            return f"epoch {event['epoch']}: kick of component {component} ended"
        return f"epoch {event['epoch']}: curriculum stopped ({event['reason']})"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
