"""Training-health diagnosis of one run: the alarms REPORT.md lists under Results.

Each check reads the run's summary metrics, histories and diagnostics (`PlotData`) and returns one
line describing the problem, or None: mixture collapse, dead components, posterior collapse, σ
saturation, overfitting, and a run that stopped at max_epochs while its monitor still improved.
docs/runbook.md says what to change when one fires.
"""

from __future__ import annotations

import numpy as np

from mixvae.metrics.keys import improves

from .formatting import direction_of, fmt
from .plots.common import PlotData, is_mixture_based


def monitor_of(data: PlotData) -> tuple[str, str]:
    """The early-stopping monitor and its mode ('min' or 'max'); `auto` follows the key's direction
    (a key without one is minimised)."""
    cfg = data.cfg
    key = cfg.training.monitor if cfg is not None else "val/loss.total"
    mode = cfg.training.monitor_mode if cfg is not None else "auto"
    if mode == "auto":
        mode = direction_of(key.split("/", 1)[-1])
        mode = mode if mode in ("min", "max") else "min"
    return key, mode


def open_components(data: PlotData) -> int:
    """Components open at the best epoch: the curriculum's mask, else all K."""
    if data.has("active_mask"):
        return int(data.active_mask.sum())
    if "curriculum.best_k_active" in data.metrics:
        return int(data.metrics["curriculum.best_k_active"])
    return int(data.model_setting("num_components", 1) or 1)


def mixture_collapse(data: PlotData) -> str | None:
    """Several open components, but the responsibilities use about one."""
    m = data.metrics
    if data.cfg is None or not is_mixture_based(data.cfg) or open_components(data) < 2:
        return None
    k_eff, active = m.get("mixture.K_eff"), m.get("mixture.active_components")
    if (k_eff is not None and k_eff < 1.5) or (active is not None and active == 1):
        return (f"mixture collapse: {open_components(data)} open components but mixture.K_eff = "
                f"{fmt(k_eff)} and mixture.active_components = {fmt(active)}")
    return None


def dead_components(data: PlotData) -> str | None:
    """Open components that are no image's most responsible component."""
    dead = data.metrics.get("mixture.dead_components", 0)
    if not dead >= 1:  # NaN never fires
        return None
    listed = ""
    if data.has("responsibilities"):
        argmax = np.asarray(data.diagnostics["responsibilities"]).argmax(axis=1)
        counts = np.bincount(argmax, minlength=data.num_components)
        never = [int(k) for k in data.active_components if counts[k] == 0]
        listed = f" (components {', '.join(map(str, never))})" if never else ""
    return f"dead components: {fmt(dead)} open component(s) are nobody's argmax" + listed


def posterior_collapse(data: PlotData) -> str | None:
    """No active latent unit, or a latent KL far below what D dimensions carry."""
    m = data.metrics
    latent_dim = data.model_setting("latent_dim")
    kl_weight = data.model_setting("kl_weight", 0) or 0
    if m.get("latent.active_units") == 0:
        return "posterior collapse: latent.active_units = 0"
    if "loss.kl_z" in m and kl_weight > 0 and latent_dim and m["loss.kl_z"] / kl_weight < 0.01 * latent_dim:
        return (f"posterior collapse: loss.kl_z / kl_weight = {fmt(m['loss.kl_z'] / kl_weight)} "
                f"< 0.01 × D = {fmt(0.01 * latent_dim)}")
    return None


def sigma_saturation(data: PlotData) -> str | None:
    """Most of the heteroscedastic decoder's σ values sit at a bound."""
    saturation = data.metrics.get("uncertainty.sigma_saturation", 0)
    if not saturation > 0.5:  # NaN never fires
        return None
    return (f"σ saturation: uncertainty.sigma_saturation = {fmt(saturation)} "
            "(> 0.5): most σ values sit at sigma_min or sigma_max")


def overfitting(data: PlotData) -> str | None:
    """At the best epoch the validation loss exceeds the training loss by more than 10 %."""
    best = data.best_epoch
    if best is None:
        return None
    val, train = data.value_at("val/loss.total", best), data.value_at("train/loss.total", best)
    if val is None or train is None or val - train <= 0.1 * abs(train):
        return None
    return (f"overfitting: at best epoch {best}, val/loss.total ({fmt(val)}) exceeds train/loss.total "
            f"({fmt(train)}) by {fmt(100 * (val - train) / abs(train))} % (> 10 %)")


def still_improving(data: PlotData) -> str | None:
    """Training reached max_epochs while the monitor still improved within the last `patience`
    epochs (the improvement rule early stopping uses; patience off: the last 10 % of epochs)."""
    cfg = data.cfg
    if cfg is None or data.metrics.get("training.stopped_early", 0) == 1:
        return None
    key, mode = monitor_of(data)
    series = data.history(key)
    max_epochs = int(cfg.training.max_epochs)
    if series is None or int(series[0][-1]) < max_epochs:
        return None
    epochs, values = series
    patience = cfg.training.patience or max(1, round(0.1 * len(epochs)))
    min_delta = float(cfg.training.min_delta or 0.0)
    best, improved = None, []
    for epoch, value in zip(epochs, values):
        if improves(value, best, mode, min_delta):
            best = value
            improved.append(int(epoch))
    if improved and improved[-1] > max_epochs - patience:
        return (f"no early stop: training ended at max_epochs ({max_epochs}) while {key} was still improving "
                f"(last improvement at epoch {improved[-1]}, within the last {patience} epochs); "
                "more epochs may help")
    return None


CHECKS = (mixture_collapse, dead_components, posterior_collapse, sigma_saturation, overfitting, still_improving)


def alarms(data: PlotData) -> list[str]:
    """Every alarm that fires for the run, in the order of `CHECKS`."""
    return [line for line in (check(data) for check in CHECKS) if line]
