"""Core plots: loss curves, reconstructions, latent space."""

from __future__ import annotations

import numpy as np

from .common import (PlotData, PlotSkipped, categorical_colors, class_legend, draw_montage, grid_shape,
                     new_figure, project_2d, save, scatter_latents, sigma_to_rgb, style, to_rgb)

# Panel order of the loss terms; anything else logged under loss.* follows alphabetically.
LOSS_TERM_ORDER = ("loss.recon", "loss.kl_z", "loss.kl_c", "loss.kl_c_logit_mog", "loss.dirichlet",
                   "loss.diversity", "loss.classifier", "loss.l1")


def gate_latent_dim(cfg) -> str | None:
    return "latent_dim is 1" if cfg.model.latent_dim == 1 else None


def split_name(data: PlotData) -> str:
    return (data.summary or {}).get("summary_split") or "summary"


# ------------------------------------------------------------------------------------ loss_curves

def loss_terms(histories: dict) -> list[str]:
    logged = {k.split("/", 1)[1] for k in histories if k.startswith(("train/loss.", "val/loss."))}
    logged -= {"loss.objective", "loss.total"}
    ordered = [t for t in LOSS_TERM_ORDER if t in logged] + sorted(logged - set(LOSS_TERM_ORDER))
    return ordered + ["loss.total"]


def unlock_epochs(data: PlotData) -> list[int]:
    return [int(e["epoch"]) for e in data.events if e.get("event") == "unlock" and e.get("epoch") is not None]


def draw_loss_curves(data: PlotData, path) -> None:
    if not any(k.startswith(("train/loss.", "val/loss.")) for k in data.histories):
        raise PlotSkipped("run has no loss histories")
    terms = loss_terms(data.histories)
    nrows, ncols = grid_shape(len(terms), max_cols=3)
    best = data.best_epoch
    unlocks = unlock_epochs(data)
    with style():
        fig, axes = new_figure(3.1 * ncols, 2.3 * nrows, nrows, ncols)
        axes = np.atleast_1d(axes).ravel()
        for ax, term in zip(axes, terms):
            for split, linestyle, color in (("train", "-", "C0"), ("val", "--", "C1")):
                series = data.history(f"{split}/{term}")
                if series is not None:
                    ax.plot(*series, linestyle=linestyle, color=color, linewidth=1.2, label=split)
            if best is not None:
                ax.axvline(best, color="0.3", linewidth=0.8, label=f"best epoch {best}")
            for i, epoch in enumerate(unlocks):
                ax.axvline(epoch, color="C2", linestyle=":", linewidth=0.8, label="unlock" if i == 0 else None)
            ax.set_title(term)
            ax.set_xlabel("epoch")
        for ax in axes[len(terms):]:
            ax.set_axis_off()
        axes[0].legend(fontsize=6)
        save(fig, path)


# -------------------------------------------------------------------------------- reconstructions

def draw_reconstructions(data: PlotData, path) -> None:
    originals = to_rgb(data.diag("recon_images"))
    recon = to_rgb(data.diag("recon_means"))
    rows = [originals, recon]
    row_titles = ["original", "x̂"]
    heteroscedastic = bool(data.cfg.model.use_heteroscedastic_decoder)
    if heteroscedastic and data.has("recon_sigma"):
        m = data.cfg.model
        rows.append(sigma_to_rgb(data.diag("recon_sigma"), m.sigma_min, m.sigma_max, originals.shape[1:3]))
        row_titles.append("σ̂")
    tiles = np.stack(rows)                          # [rows, 8, H, W, 3]
    with style():
        fig, _ = draw_montage(tiles, column_titles=[""] * tiles.shape[1], row_titles=row_titles)
        title = f"8 fixed {split_name(data)} images and their reconstructions x̂"
        if heteroscedastic and not data.has("recon_sigma"):
            title += " (σ̂ not recorded in the diagnostics)"
        fig.suptitle(title, fontsize=7.5)
        save(fig, path)


# ----------------------------------------------------------------------------------- latent_space

def selected_latents(data: PlotData) -> np.ndarray:
    if data.has("z_mean_selected"):
        return data.diag("z_mean_selected")
    z = data.diag("z_mean")
    if z.ndim != 2:
        raise PlotSkipped("diagnostics have no 'z_mean_selected' array")
    return z


def draw_latent_space(data: PlotData, path) -> None:
    xy, axis_labels = project_2d(selected_latents(data))
    labels = data.labels()
    num_classes = int(data.cfg.model.num_classes)
    with style():
        fig, ax = new_figure(4.6, 3.8)
        scatter_latents(ax, xy, categorical_colors(labels, num_classes), axis_labels)
        class_legend(ax, labels, num_classes)
        ax.set_title(f"latent means by true label ({split_name(data)} split, n={len(xy)})")
        save(fig, path)
