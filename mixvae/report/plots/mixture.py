"""Mixture plots: how the K components are used, routed and decoded."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import (PlotData, PlotSkipped, arrange_panels, categorical_colors, colormap, draw_montage,
                     grid_shape, is_component_decoding, is_mixture_based, mean_excluding_diagonal,
                     new_figure, panel_figure, project_2d, render, save, scatter_latents, style, to_rgb,
                     write_png)
from .core import gate_latent_dim, selected_latents, split_name

COMPONENT_LATENTS_DIR = "mixture/component_latents"
COMPONENT_PANEL_INCHES = (1.72, 1.47)     # the axes of one component's latent in the grid


# ------------------------------------------------------------------------------------------ gates

def gate_mixture_based(cfg) -> str | None:
    if is_mixture_based(cfg):
        return None
    return f"requires a mixture-based prior (prior_type is '{cfg.model.prior_type}')"


def gate_mixture_scatter(cfg) -> str | None:
    return gate_mixture_based(cfg) or gate_latent_dim(cfg)


def gate_embeddings(cfg) -> str | None:
    if not is_component_decoding(cfg):
        return f"prior_type '{cfg.model.prior_type}' has no component embeddings"
    if cfg.model.decoder_conditioning == "none":
        return "decoder_conditioning is 'none': embeddings are unused"
    return None


def gate_component_reconstructions(cfg) -> str | None:
    if not is_component_decoding(cfg):
        return f"requires a component-decoding prior (prior_type is '{cfg.model.prior_type}')"
    if cfg.model.latent_layout == "shared" and cfg.model.decoder_conditioning == "none":
        return "all components decode identically (shared layout, decoder_conditioning none)"
    return None


def gate_component_kl(cfg) -> str | None:
    return "latent_layout is 'shared': no per-component latents" if cfg.model.latent_layout == "shared" else None


def gate_routing(cfg) -> str | None:
    return None if cfg.model.use_gumbel_softmax else "use_gumbel_softmax is false: routing equals responsibilities"


# ------------------------------------------------------------------------------------------ helpers

def component_ticks(ax, components: np.ndarray, axis: str = "y") -> None:
    step = max(1, len(components) // 25)
    positions = np.arange(len(components))[::step]
    labels = [str(int(k)) for k in components[::step]]
    if axis == "y":
        ax.set_yticks(positions, labels)
    else:
        ax.set_xticks(positions, labels)


def component_legend(ax, num_components: int) -> None:
    if num_components > 20:
        return
    from matplotlib.lines import Line2D
    colors = categorical_colors(np.arange(num_components), num_components)
    handles = [Line2D([], [], marker="o", linestyle="", color=colors[k], markersize=4, label=str(k))
               for k in range(num_components)]
    ax.legend(handles=handles, fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
              title="component", title_fontsize=7)


def ranking_weights(data: PlotData) -> tuple[np.ndarray, str]:
    """Per-image component scores for the 6 fixed images: responsibilities when recorded, else routing weights."""
    for name in ("percomp_resp", "percomp_responsibilities"):
        if data.has(name):
            return data.diag(name), "r"
    return data.diag("percomp_weights"), "w"


def blend(weights: np.ndarray, means: np.ndarray) -> np.ndarray:
    """x̂ = Σ_k w_k m_k (probabilities, never logits)."""
    return np.einsum("bk,bk...->b...", weights, means)


# ------------------------------------------------------------------------------------------ scatters

def draw_latent_by_component(data: PlotData, path) -> None:
    xy, axis_labels = project_2d(selected_latents(data))
    responsibilities = data.diag("responsibilities")
    num_components = responsibilities.shape[1]
    component = responsibilities.argmax(axis=1)
    with style():
        fig, ax = new_figure(4.6, 3.8)
        scatter_latents(ax, xy, categorical_colors(component, num_components), axis_labels)
        component_legend(ax, num_components)
        ax.set_title(f"latent means by argmax component ({split_name(data)} split)")
        save(fig, path)


def component_latent_files(data: PlotData) -> list[str]:
    return [f"{COMPONENT_LATENTS_DIR}/grid.png"] + [
        f"{COMPONENT_LATENTS_DIR}/component_{k:02d}.png" for k in data.active_components]


def draw_component_latents(data: PlotData, path) -> None:
    """One panel per active component in that component's own latent; opacity = r_k(x).

    The panels are measured once and placed (`arrange_panels`), the grid is drawn once, and each
    component's file is cropped from the rendered grid (same pixels, no second rendering)."""
    z = data.diag("z_mean")
    responsibilities = data.diag("responsibilities")
    labels = data.labels()
    components = data.active_components
    base_colors = categorical_colors(labels, int(data.cfg.model.num_classes))
    shared = z.ndim == 2
    if shared:
        shared_xy, axis_labels = project_2d(z)
    _, ncols = grid_shape(len(components), max_cols=5)
    out_dir = Path(path).parent
    with style():
        fig, axes = panel_figure(len(components), *COMPONENT_PANEL_INCHES)
        usage = responsibilities.mean(axis=0)
        for ax, k in zip(axes, components):
            xy, labels_k = (shared_xy, axis_labels) if shared else project_2d(z[:, k])
            colors = base_colors.copy()
            colors[:, 3] = np.clip(responsibilities[:, k], 0.0, 1.0)
            order = np.argsort(colors[:, 3], kind="stable")          # confident points on top
            scatter_latents(ax, xy[order], colors[order], labels_k, size=4.0)
            ax.set_title(f"component {k} · usage {usage[k]:.3f}", fontsize=8)
            ax.tick_params(labelsize=6)
        crops = arrange_panels(fig, axes, ncols, "each component's own latent, opacity = r_k(x), colour = label")
        pixels = render(fig)
        write_png(pixels, out_dir / "grid.png")
        for (x0, y0, x1, y1), k in zip(crops, components):
            write_png(pixels[y0:y1, x0:x1], out_dir / f"component_{k:02d}.png")


# ------------------------------------------------------------------------------------- histograms

def draw_responsibility_histogram(data: PlotData, path) -> None:
    confidence = data.diag("responsibilities").max(axis=1)
    with style():
        fig, ax = new_figure(4.2, 2.8)
        ax.hist(confidence, bins=40, range=(0.0, 1.0), color="C0", histtype="stepfilled")
        ax.axvline(confidence.mean(), color="0.2", linestyle="--", linewidth=1.0,
                   label=f"mean {confidence.mean():.3f}")
        ax.set_xlabel("max_k r_k(x)")
        ax.set_ylabel("images")
        ax.set_title(f"responsibility confidence ({split_name(data)} split)")
        ax.legend(fontsize=7)
        save(fig, path)


def draw_routing_hardness(data: PlotData, path) -> None:
    soft = data.diag("responsibilities").max(axis=1)
    sampled = data.diag("routing_sampled").max(axis=1)
    with style():
        fig, (left, right) = new_figure(8.0, 2.9, 1, 2)
        for values, color, label in ((soft, "C0", "max r (deterministic)"), (sampled, "C3", "max ŝ (Gumbel sample)")):
            left.hist(values, bins=40, range=(0, 1), alpha=0.65, color=color, histtype="stepfilled", label=label)
        left.set_xlabel("confidence")
        left.set_ylabel("images")
        left.legend(fontsize=6)
        left.set_title("responsibilities vs sampled routing")
        for key, color in (("val/mixture.responsibility_confidence_mean", "C0"),
                           ("train/mixture.routing_confidence_mean", "C3")):
            series = data.history(key)
            if series is not None:
                right.plot(*series, color=color, linewidth=1.2, label=key)
        right.set_xlabel("epoch")
        right.set_ylim(0, 1.02)
        right.legend(fontsize=6)
        right.set_title("confidence over epochs")
        save(fig, path)


# -------------------------------------------------------------------------------------- evolution

def draw_mixture_evolution(data: PlotData, path) -> None:
    arrays = data.history_arrays
    if not arrays or "epoch" not in arrays:
        raise PlotSkipped("run has no diagnostics/history.npz")
    epochs = np.asarray(arrays["epoch"], dtype=float)
    panels = [(name, np.asarray(arrays[key], dtype=float)) for name, key in
              (("π_k", "pi"), ("validation usage p̄_k", "usage_val")) if key in arrays]
    if not panels:
        raise PlotSkipped("diagnostics/history.npz has neither 'pi' nor 'usage_val'")
    num_components = panels[0][1].shape[1]
    active = np.asarray(arrays.get("active_mask", np.ones((len(epochs), num_components))), dtype=bool)
    colors = categorical_colors(np.arange(num_components), num_components)
    with style():
        fig, axes = new_figure(4.2 * len(panels), 3.0, 1, len(panels))
        for ax, (title, values) in zip(np.atleast_1d(axes), panels):
            for k in range(num_components):
                inactive = ~active[:, k]
                # the inactive stretch includes the epoch it ends at, so the two parts join
                draw_inactive = inactive | np.concatenate([[False], inactive[:-1]])
                if inactive.any():
                    ax.plot(epochs, np.where(draw_inactive, values[:, k], np.nan), color="0.6",
                            linestyle="--", linewidth=0.9)
                ax.plot(epochs, np.where(active[:, k], values[:, k], np.nan), color=colors[k], linewidth=1.1,
                        label=str(k))
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.set_ylim(bottom=0)
        if num_components <= 20:
            np.atleast_1d(axes)[-1].legend(fontsize=5.5, title="component", title_fontsize=6, loc="center left",
                                           bbox_to_anchor=(1.0, 0.5), frameon=False)
        save(fig, path)


# ------------------------------------------------------------------------------------- embeddings

def draw_component_embedding_divergence(data: PlotData, path) -> None:
    embeddings = data.diag("embeddings")
    components = data.active_components
    active = embeddings[components]
    distances = np.sqrt(((active[:, None, :] - active[None, :, :]) ** 2).sum(axis=-1))
    mean, low, high = mean_excluding_diagonal(distances)
    size = 2.6 + 0.18 * min(len(components), 40)
    with style():
        fig, ax = new_figure(size + 0.8, size)
        image = ax.imshow(distances, cmap=colormap("viridis"))
        ax.grid(False)
        component_ticks(ax, components, "x")
        component_ticks(ax, components, "y")
        ax.set_xlabel("component")
        ax.set_ylabel("component")
        fig.colorbar(image, ax=ax, shrink=0.8, label="‖e_j − e_k‖")
        ax.set_title(f"embedding distances · mean {mean:.3g} · min {low:.3g} · max {high:.3g}")
        save(fig, path)


# -------------------------------------------------------------------------------- reconstructions

def component_means(data: PlotData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images = to_rgb(data.diag("percomp_images"))            # [6, H, W, 3]
    means = np.clip(data.diag("percomp_means").astype(np.float32), 0.0, 1.0)   # [6, K, H, W, Ch]
    weights = data.diag("percomp_weights").astype(np.float32)                  # [6, K]
    return images, means, weights


def draw_reconstruction_by_component(data: PlotData, path) -> None:
    images, means, weights = component_means(data)
    scores, symbol = ranking_weights(data)
    components = data.active_components
    sigma = data.diag("percomp_sigma") if data.has("percomp_sigma") else None
    tiles = np.concatenate([images[:, None], to_rgb(means[:, components]), to_rgb(blend(weights, means))[:, None]],
                           axis=1)
    notes = []
    for b in range(tiles.shape[0]):
        row = [""]
        for k in components:
            note = f"{symbol}={scores[b, k]:.2f}"
            if sigma is not None:
                note += f"\nσ={np.mean(sigma[b, k]):.2f}"
            row.append(note)
        notes.append(row + [""])
    titles = ["original"] + [f"k={k}" for k in components] + ["blend"]
    with style():
        fig, _ = draw_montage(tiles, titles, tile_notes=notes, inch_per_tile=min(0.75, 16.0 / tiles.shape[1]),
                              note_size=5.0, note_lines=1 if sigma is None else 2)
        save(fig, path)


def draw_selected_vs_weighted(data: PlotData, path) -> None:
    images, means, weights = component_means(data)
    scores, symbol = ranking_weights(data)
    selected = weights.argmax(axis=1)                                   # m_{argmax_k s_k}
    order = np.argsort(-scores, axis=1, kind="stable")
    second = np.where(order[:, 0] == selected, order[:, 1], order[:, 0]) if scores.shape[1] > 1 else None
    rows = np.arange(len(images))
    columns = [images, to_rgb(means[rows, selected]), to_rgb(blend(weights, means))]
    notes = [["", f"k={selected[b]}", "", ""] for b in rows]
    if second is not None and data.active_mask.sum() > 1:
        columns.append(to_rgb(means[rows, second]))
        for b in rows:
            notes[b][3] = f"k={second[b]} {symbol}={scores[b, second[b]]:.2f}"
    else:
        columns.append(np.ones_like(images))
        for b in rows:
            notes[b][3] = "only one component"
    tiles = np.stack(columns, axis=1)
    with style():
        fig, _ = draw_montage(tiles, ["original", "selected", "weighted blend", "second"], tile_notes=notes)
        save(fig, path)


# -------------------------------------------------------------------------------------- ownership

def draw_component_ownership(data: PlotData, path) -> None:
    labels = data.require_labels()
    responsibilities = data.diag("responsibilities")
    components = data.active_components
    num_classes = int(data.cfg.model.num_classes)
    onehot = (labels[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)     # [N, C]
    counts = onehot.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ownership = (responsibilities[:, components].T @ onehot) / counts[None, :]         # O[k, c]
    with style():
        fig, ax = new_figure(1.6 + 0.32 * num_classes, 1.2 + 0.26 * len(components))
        image = ax.imshow(ownership, cmap=colormap("viridis"), vmin=0.0, vmax=1.0, aspect="auto")
        ax.grid(False)
        ax.set_xticks(np.arange(num_classes), [str(c) for c in range(num_classes)])
        component_ticks(ax, components, "y")
        ax.set_xlabel("class")
        ax.set_ylabel("component")
        if ownership.size <= 400:
            rows, cols = np.nonzero(np.nan_to_num(ownership) >= 0.05)
            for r, c in zip(rows, cols):
                value = ownership[r, c]
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=5,
                        color="black" if value > 0.6 else "white")
        fig.colorbar(image, ax=ax, shrink=0.8, label="mean r_k over class")
        ax.set_title("component ownership O[k, c]")
        save(fig, path)


def draw_component_kl(data: PlotData, path) -> None:
    kl = data.diag("kl_per_component").mean(axis=0)
    active = data.active_mask
    colors = np.where(active[:, None], np.array([[0.12, 0.47, 0.71, 1.0]]), np.array([[0.7, 0.7, 0.7, 1.0]]))
    with style():
        fig, ax = new_figure(max(3.5, 0.25 * len(kl) + 1.5), 2.8)
        ax.bar(np.arange(len(kl)), kl, color=colors)
        ax.set_xlabel("component")
        ax.set_ylabel("mean KL (nats)")
        component_ticks(ax, np.arange(len(kl)), "x")
        title = "mean KL(q(z_k|x) ‖ prior_k) per component"
        if not active.all():
            title += " (grey: closed)"
        ax.set_title(title)
        save(fig, path)
