"""τ classifier plots: the label map, per-class accuracy, certainty calibration."""

from __future__ import annotations

import numpy as np

from .common import PlotData, colormap, new_figure, save, style

TAU_TEXT_THRESHOLD = 0.15      # values above this are written in the τ cells (as tau.label_coverage uses)
CALIBRATION_BINS = 10


def gate_tau(cfg) -> str | None:
    return None if cfg.model.use_tau_classifier else "model.use_tau_classifier is false"


def free_components(data: PlotData) -> np.ndarray:
    """Components whose labeled evidence Σ_c (N_kc − α₀) is below tau_free_count_threshold: the
    run's own `tau_free` diagnostics; recomputed from `tau_counts` only for runs recorded before
    the diagnostics held it (the rule of mixvae.model.tau, without importing the model)."""
    if data.has("tau_free"):
        return data.diag("tau_free").astype(bool)
    counts = data.diag("tau_counts")
    model = data.cfg.model
    evidence = (counts - float(model.tau_smoothing_alpha)).sum(axis=1)
    return evidence < float(model.tau_free_count_threshold)


def draw_tau_matrix(data: PlotData, path) -> None:
    tau = data.diag("tau")
    components = data.active_components
    free = free_components(data) if data.has("tau_counts") or data.has("tau_free") else np.zeros(len(tau), dtype=bool)
    matrix = tau[components]
    num_classes = matrix.shape[1]
    with style():
        fig, ax = new_figure(1.8 + 0.36 * num_classes, 1.2 + 0.27 * len(components))
        image = ax.imshow(matrix, cmap=colormap("Blues"), vmin=0.0, vmax=1.0, aspect="auto")
        ax.grid(False)
        rows, cols = np.nonzero(matrix > TAU_TEXT_THRESHOLD)
        for r, c in zip(rows, cols):
            ax.text(c, r, f"{matrix[r, c]:.2f}", ha="center", va="center", fontsize=5,
                    color="white" if matrix[r, c] > 0.6 else "black")
        from matplotlib.collections import PatchCollection
        from matplotlib.patches import Rectangle
        best = matrix.argmax(axis=1)                     # each row's argmax framed in red
        ax.add_collection(PatchCollection([Rectangle((c - 0.5, r - 0.5), 1, 1) for r, c in enumerate(best)],
                                          facecolor="none", edgecolor="C3", linewidth=1.2))
        ax.set_xticks(np.arange(num_classes), [str(c) for c in range(num_classes)])
        step = max(1, len(components) // 25)
        ax.set_yticks(np.arange(len(components))[::step],
                      [f"{k} free" if free[k] else str(k) for k in components[::step]])
        ax.set_xlabel("label c")
        ax.set_ylabel("component k")
        fig.colorbar(image, ax=ax, shrink=0.8, label="τ_kc")
        ax.set_title(f"τ label map · {int(free[components].sum())} free components")
        save(fig, path)


def labeled_predictions(data: PlotData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = data.require_labels()
    keep = labels >= 0
    return labels[keep], data.diag("tau_pred").astype(int)[keep], data.diag("tau_certainty")[keep]


def draw_tau_per_class_accuracy(data: PlotData, path) -> None:
    labels, predicted, _ = labeled_predictions(data)
    num_classes = int(data.cfg.model.num_classes)
    classes = np.arange(num_classes)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    hits = np.bincount(labels[predicted == labels], minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    overall = float(np.mean(predicted == labels))
    with style():
        fig, ax = new_figure(1.5 + 0.42 * num_classes, 2.9)
        ax.bar(classes, np.nan_to_num(accuracy), color="C0")
        for c in classes:
            ax.text(c, np.nan_to_num(accuracy[c]) + 0.02, f"n={counts[c]}", ha="center", va="bottom", fontsize=5.5)
        ax.axhline(overall, color="0.2", linestyle="--", linewidth=1.0, label=f"overall {overall:.3f}")
        ax.set_xticks(classes, [str(c) for c in classes])
        ax.set_ylim(0, 1.12)
        ax.set_xlabel("class")
        ax.set_ylabel("τ accuracy")
        ax.legend(fontsize=6, loc="lower right")
        ax.set_title("τ accuracy per class")
        save(fig, path)


def calibration_bins(certainty: np.ndarray, correct: np.ndarray):
    """Per bin of 10 equal-width bins on [0, 1]: count, accuracy, mean certainty; and the ECE."""
    index = np.minimum((np.clip(certainty, 0, 1) * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    counts = np.bincount(index, minlength=CALIBRATION_BINS)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=CALIBRATION_BINS) / counts
        confidence = np.bincount(index, weights=certainty, minlength=CALIBRATION_BINS) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / counts.sum() * np.abs(accuracy[filled] - confidence[filled])))
    return counts, accuracy, confidence, ece


def draw_tau_certainty_calibration(data: PlotData, path) -> None:
    labels, predicted, certainty = labeled_predictions(data)
    counts, accuracy, confidence, ece = calibration_bins(certainty.astype(float), (predicted == labels).astype(float))
    filled = counts > 0
    with style():
        fig, ax = new_figure(3.6, 3.4)
        ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=0.9, label="y = x")
        ax.scatter(confidence[filled], accuracy[filled], s=12 + 300 * counts[filled] / counts.max(), color="C0",
                   alpha=0.8, label="bins (size ∝ count)")
        ax.plot(confidence[filled], accuracy[filled], color="C0", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("certainty (mean in bin)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=6, loc="upper left")
        ax.set_title(f"τ reliability · calibration error {ece:.3f}")
        save(fig, path)
