"""Split-level metrics from per-image arrays, computed on the host with NumPy.

Every function takes arrays that the evaluation function already fetched once per split; none of them
sees a model. All sums over components run over the active set A; closed components are never counted
as dead or unused.
"""

from __future__ import annotations

import numpy as np

from mixvae.metrics.keys import ACTIVE_USAGE_THRESHOLD
from mixvae.model.entropy import entropy as model_entropy

EPS = 1e-12


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """H(p) in nats, computed on the host in float64 (the one definition: ``mixvae.model.entropy``)."""
    return model_entropy(np.asarray(p, dtype=np.float64), axis=axis)


def usage_metrics(usage: np.ndarray, active: np.ndarray) -> dict[str, float]:
    """K_eff and active_components from the mean responsibilities p̄ (over the active set)."""
    a = active.astype(bool)
    p = usage[a]
    total = p.sum()
    p_norm = p / total if total > 0 else p
    return {
        "mixture.K_eff": float(np.exp(entropy(p_norm))),
        "mixture.active_components": float(np.sum(p > ACTIVE_USAGE_THRESHOLD)),
    }


def active_winners(resp: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Each image's most responsible active component (argmax of r over the active set) → [N]."""
    return np.argmax(np.where(active.astype(bool)[None, :], resp, -1.0), axis=1)


def label_mass(resp: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_x r_k(x)·1[y=c] [K, C], purity max_c P(c|k) [K], 0 for a component with no mass)."""
    mass = resp.T @ np.eye(num_classes)[labels]
    per_k = mass.sum(axis=1)
    return mass, np.where(per_k > 0, mass.max(axis=1) / np.maximum(per_k, EPS), 0.0)


def mixture_metrics(resp: np.ndarray, active: np.ndarray) -> dict[str, float]:
    """Mixture keys that come from per-image responsibilities r [N, K]."""
    a = active.astype(bool)
    out = usage_metrics(resp.mean(axis=0), active)
    used = np.bincount(active_winners(resp, active), minlength=resp.shape[1]) > 0
    out["mixture.dead_components"] = float(np.sum(a & ~used))
    out["mixture.responsibility_confidence_mean"] = float(resp.max(axis=1).mean())
    out["mixture.component_entropy"] = float(entropy(resp).mean())
    return out


def pi_metrics(pi: np.ndarray, active: np.ndarray) -> dict[str, float]:
    """H(π^A), max and min of π^A (π renormalised over the active set)."""
    a = active.astype(bool)
    p = pi[a] / max(pi[a].sum(), EPS)
    return {"mixture.pi_entropy": float(entropy(p)), "mixture.pi_max": float(p.max()),
            "mixture.pi_min": float(p.min())}


def specialization(resp: np.ndarray, labels: np.ndarray, active: np.ndarray, num_classes: int) -> float:
    """Σ_{k∈A} p̄_k · max_c P(c|k), P(c|k) = Σ_x r_k(x)·1[y=c] / Σ_x r_k(x)."""
    a = active.astype(bool)
    _, purity = label_mass(resp, labels, num_classes)
    usage = resp.mean(axis=0)
    return float(np.sum(usage[a] * purity[a]))


def clustering_metrics(resp: np.ndarray, labels: np.ndarray, active: np.ndarray,
                       num_classes: int) -> tuple[dict[str, float], str]:
    """NMI, ARI and accuracy (Hungarian when K = C, purity otherwise); returns (metrics, acc method)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    k = resp.shape[1]
    clusters = active_winners(resp, active)
    table = np.zeros((k, num_classes), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    n = len(labels)
    if k == num_classes:
        rows, cols = linear_sum_assignment(-table)
        acc, method = table[rows, cols].sum() / n, "hungarian"
    else:
        acc, method = table.max(axis=1).sum() / n, "purity"
    return {
        "clustering.nmi": float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic")),
        "clustering.ari": float(adjusted_rand_score(labels, clusters)),
        "clustering.acc": float(acc),
    }, method


def active_units(z_mean_selected: np.ndarray, threshold: float = 0.01) -> float:
    """Dimensions whose posterior mean varies across the split (0 signals posterior collapse)."""
    if len(z_mean_selected) < 2:
        return 0.0
    return float(np.sum(np.var(z_mean_selected, axis=0) > threshold))


def majority_labels(resp: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[list[int], list[float]]:
    """Each component's majority label and its share of the component's responsibility mass."""
    mass, share = label_mass(resp, labels, num_classes)
    return [int(m) for m in mass.argmax(axis=1)], [float(s) for s in share]


def calibration_error(certainty: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error with equal-width certainty bins on [0, 1]."""
    idx = np.clip((certainty * bins).astype(int), 0, bins - 1)
    n = len(certainty)
    err = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            err += sel.sum() / n * abs(correct[sel].mean() - certainty[sel].mean())
    return float(err)


def tau_metrics(tau: np.ndarray, free: np.ndarray, active: np.ndarray, pred: np.ndarray,
                certainty: np.ndarray, ood: np.ndarray, labels: np.ndarray | None) -> dict[str, float]:
    """The τ metric keys (docs/metrics.md); label-based ones only when ``labels`` is given."""
    a = active.astype(bool)
    claimed = a & ~free.astype(bool)
    out = {
        "tau.certainty_mean": float(certainty.mean()),
        "tau.certainty_std": float(certainty.std()),
        "tau.certainty_min": float(certainty.min()),
        "tau.certainty_max": float(certainty.max()),
        "tau.ood_score_mean": float(ood.mean()),
        "tau.ood_score_std": float(ood.std()),
        "tau.num_free_channels": float(np.sum(a & free.astype(bool))),
        "tau.matrix_sparsity": float(np.mean(tau[a] < 0.05)) if a.any() else 0.0,
    }
    c = tau.shape[1]
    best = tau.argmax(axis=1)
    coverage = {int(best[k]) for k in np.flatnonzero(claimed) if tau[k, best[k]] > 0.15}
    out["tau.label_coverage"] = float(len(coverage))
    out["tau.components_per_label_mean"] = float(np.mean([np.sum(claimed & (tau[:, j] > 0.15))
                                                          for j in range(c)]))
    if labels is not None:
        correct = (pred == labels).astype(np.float64)
        out["tau.accuracy"] = float(correct.mean())
        out["tau.calibration_error"] = calibration_error(certainty, correct)
    return out
