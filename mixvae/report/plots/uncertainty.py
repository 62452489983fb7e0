"""Uncertainty plot: the distribution of the learned σ."""

from __future__ import annotations

import numpy as np

from .common import PlotData, new_figure, save, style


def gate_heteroscedastic(cfg) -> str | None:
    return None if cfg.model.use_heteroscedastic_decoder else "model.use_heteroscedastic_decoder is false"


def saturation_share(sigma: np.ndarray, sigma_min: float, sigma_max: float) -> float:
    """Share of σ within 1 % of either end of [σ_min, σ_max] (uncertainty.sigma_saturation)."""
    margin = 0.01 * (sigma_max - sigma_min)
    return float(np.mean((sigma < sigma_min + margin) | (sigma > sigma_max - margin)))


def draw_sigma_histogram(data: PlotData, path) -> None:
    sigma = data.diag("sigma").ravel().astype(float)
    low, high = float(data.cfg.model.sigma_min), float(data.cfg.model.sigma_max)
    pad = 0.05 * (high - low)
    with style():
        fig, ax = new_figure(4.4, 2.8)
        ax.hist(sigma, bins=50, range=(low - pad, high + pad), color="C4", histtype="stepfilled")
        for value, name in ((low, "sigma_min"), (high, "sigma_max")):
            ax.axvline(value, color="0.2", linestyle="--", linewidth=1.0)
            ax.text(value, 1.0, f" {name}", transform=ax.get_xaxis_transform(), fontsize=6, va="top")
        ax.set_xlabel("σ")
        ax.set_ylabel("count")
        ax.set_title(f"σ̂ values · saturation {100 * saturation_share(sigma, low, high):.1f} %")
        save(fig, path)
