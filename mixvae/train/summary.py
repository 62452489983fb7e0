"""The end of a run in numbers: the summary metrics (the restored best epoch on the summary split, plus
training and curriculum figures), why each metric that is absent is absent (``metrics_status``), the
per-component table, and the content of ``summary.json``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from mixvae import __version__
from mixvae.metrics import compute as mc
from mixvae.metrics import keys as mk
from mixvae.train.evaluation import SplitResult


@functools.cache
def _installed_versions() -> tuple[tuple[str, str], ...]:
    """Read once per process: the package metadata lookup costs milliseconds, and every checkpoint
    records the versions."""
    import importlib.metadata as md
    out = {"mixvae": __version__}
    for pkg in ("jax", "flax", "optax", "mlflow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return tuple(out.items())


def versions() -> dict[str, str]:
    """Versions of mixvae and the libraries that shape its numbers."""
    return dict(_installed_versions())


def peak_rss_mb() -> float:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover
        import psutil
        return psutil.Process().memory_info().rss / 2**20


def curriculum_metrics(curriculum, history: dict[str, list], best_mask: np.ndarray,
                       kick_epochs_total: int) -> dict[str, float]:
    """The curriculum's summary keys: components open at the end and at the best epoch, unlocks, kicks."""
    final = curriculum.k_active if not history["active_mask"] else np.sum(history["active_mask"][-1])
    return {
        "curriculum.final_k_active": float(final),
        "curriculum.best_k_active": float(best_mask.sum()),
        "curriculum.unlock_count": float(sum(e["event"] == "unlock" for e in curriculum.events)),
        "curriculum.kick_epochs_total": float(kick_epochs_total),
        "curriculum.stopped": float(curriculum.stopped)}


def finite_declared(metrics: dict[str, float]) -> dict[str, float]:
    """The finite values only; every key must be a declared summary key."""
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    undeclared = [k for k in metrics if not mk.is_declared(k)]
    assert not undeclared, f"undeclared summary keys {undeclared}"
    return metrics


def metrics_status(cfg, num_labeled: int, split_status: dict[str, dict]) -> dict[str, dict]:
    """Every absent metric with its reason: disabled by the configuration, or skipped/failed on the split."""
    status = {k: {"status": "disabled", "reason": r} for k, r in mk.disabled_reasons(cfg, num_labeled).items()}
    status.update(split_status)
    return status


def per_component(cfg, res: SplitResult, mask, y: np.ndarray, pi: np.ndarray | None) -> dict:
    """Usage, π, majority label and its share, and the active flag of every component."""
    k = cfg.model.num_components
    out = {"usage": [], "pi": [], "majority_label": [], "majority_share": [], "active": [bool(a) for a in mask]}
    if "responsibilities" not in res.per_image:
        return out
    r = res.per_image["responsibilities"]
    out["usage"] = [float(u) for u in r.mean(0)]
    out["pi"] = [float(p) for p in (pi if pi is not None else np.full(k, 1.0 / k))]
    labeled = y >= 0
    if labeled.any():
        out["majority_label"], out["majority_share"] = mc.majority_labels(r[labeled], y[labeled],
                                                                          cfg.model.num_classes)
    return out


def data_record(ds) -> dict:
    return {"dataset": ds.name, "shape": list(ds.image_shape), "n_train": ds.n_train, "n_val": ds.n_val,
            "n_test": ds.n_test, "n_labeled": ds.n_labeled, "scale_used": float(ds.scale_used),
            "digest": ds.digest}


def summary_document(*, failed: bool, split: str, best_epoch: int, metrics: dict, status: dict,
                     result: SplitResult, components: dict, curriculum, ds, warnings: list[str],
                     val_check: dict) -> dict:
    """The content of ``summary.json`` (the run id and final status are added by the caller)."""
    return {
        "status": "FAILED" if failed else "FINISHED",
        "summary_split": split, "best_epoch": best_epoch,
        "metrics": metrics, "metrics_status": status,
        "clustering_acc_method": result.acc_method,
        "per_component": components,
        "curriculum": {"stop_reason": curriculum.stop_reason if curriculum.enabled else "none",
                       "events": curriculum.events},
        "data": data_record(ds),
        "warnings": warnings,
        "versions": versions(),
        "val_check": dict(val_check),
    }


def jsonable(value):
    """Plain JSON values: NumPy scalars and arrays as numbers and lists, non-finite floats as null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value


