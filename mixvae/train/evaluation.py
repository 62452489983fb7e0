"""Metrics of one epoch's training sums and of a whole evaluated split (validation or test).

The compiled evaluation function runs chunk by chunk; the chunks are dispatched asynchronously and
fetched once per split, then reduced here with NumPy. A metric that fails to compute never fails the
run: it is recorded as failed, with the reason, in the split's status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np
from flax import nnx

from mixvae.metrics import compute as mc
from mixvae.model import tau as tau_lib
from mixvae.model.losses import TRAINING_AIDS

F32 = np.float32
NO_LABELS = {"status": "skipped", "reason": "the split has no labels"}
LABEL_KEYS = ["clustering.nmi", "clustering.ari", "clustering.acc", "mixture.specialization"]


@dataclass
class SplitResult:
    metrics: dict[str, float]
    status: dict[str, dict]                 # skipped/failed metrics of this split
    per_image: dict[str, np.ndarray]
    acc_method: str | None = None


def mixture_weights(cfg, graphdef, params) -> np.ndarray | None:
    """π = softmax(pi_logits); None without components. A fixed π stays uniform, so no lookup is needed."""
    k = cfg.model.num_components
    if not cfg.model.is_component_decoding:
        return None
    if not cfg.model.learnable_pi:
        return np.full(k, 1.0 / k)
    model = nnx.merge(graphdef, params)
    if getattr(model, "pi_logits", None) is None:
        return None
    logits = np.asarray(model.pi_logits[...], np.float64)
    e = np.exp(logits - logits.max())
    return (e / e.sum()).astype(np.float64)


def uniform_if_none(pi: np.ndarray | None, k: int) -> np.ndarray:
    return np.full(k, 1.0 / k) if pi is None else pi


def tau_and_free(cfg, tau_counts, active_mask) -> tuple[np.ndarray, np.ndarray]:
    """The τ map of the counts and the free components (active, with too little labeled evidence)."""
    m = cfg.model
    counts = np.asarray(tau_counts)
    tau = np.asarray(tau_lib.tau_map(counts))
    free = np.asarray(tau_lib.free_components(counts, m.tau_smoothing_alpha, m.tau_free_count_threshold,
                                              active_mask)).astype(bool)
    return tau, free


def train_metrics(sums: dict, active_mask: np.ndarray) -> dict[str, float]:
    """An epoch's training metrics from the sums the compiled epoch accumulated."""
    n = max(float(sums["n_images"]), 1.0)
    steps = max(float(sums["n_steps"]), 1.0)
    out = {k: float(v) / n for k, v in sums["image"].items()}
    out.update({k: float(v) / max(float(sums["n_labeled"]), 1.0) for k, v in sums["labeled"].items()})
    out.update({k: float(v) / steps for k, v in sums["step"].items()})
    # loss.total: the model's terms only, comparable with validation (the training-only aids, warm start
    # and neighbour agreement, are logged apart).
    out["loss.total"] = float(sum(v for k, v in out.items() if k not in TRAINING_AIDS))
    out["loss.objective"] = float(sums["loss.objective"]) / steps
    if "usage" in sums:
        usage = np.asarray(sums["usage"]) / n
        a = active_mask.astype(bool)
        out.update(mc.usage_metrics(usage, active_mask))
        out["mixture.dead_components"] = float(np.sum(a & (np.asarray(sums["winners"]) == 0)))
        out["mixture.responsibility_confidence_mean"] = float(sums["confidence"]) / n
        out["mixture.component_entropy"] = float(sums["entropy"]) / n
    if "routing_confidence" in sums:
        out["mixture.routing_confidence_mean"] = float(sums["routing_confidence"]) / n
    return out


def pad_to(x: np.ndarray, size: int, fill=0) -> np.ndarray:
    """``x`` padded along its first axis to ``size`` rows of ``fill``."""
    pad = size - len(x)
    if not pad:
        return x
    return np.concatenate([x, np.full((pad, *x.shape[1:]), fill, x.dtype)])


def concat_chunks(outs: list, n: int) -> dict:
    """Concatenate per-image leaves of chunk outputs and cut the padding (step terms are kept apart)."""
    def cat(*leaves):
        return np.concatenate([np.asarray(leaf).reshape(np.shape(leaf) or (1,)) for leaf in leaves])[:n]
    return {k: jax.tree.map(cat, *[o[k] for o in outs]) for k in outs[0] if k != "step"}


class SplitEvaluator:
    """Evaluation mode over a whole split, and the split's metrics."""

    def __init__(self, cfg, graphdef, image_shape, chunk: int, key):
        self.cfg, self.graphdef, self.image_shape = cfg, graphdef, tuple(image_shape)
        self.chunk, self.key = chunk, key
        self.compiled = None          # the compiled evaluation function, set once compiled

    def __call__(self, params, tau_counts, x: np.ndarray, y: np.ndarray, active_mask: np.ndarray,
                 temp: float) -> SplitResult:
        outs = []
        for i, start in enumerate(range(0, len(x), self.chunk)):
            xs = pad_to(np.asarray(x[start:start + self.chunk], F32), self.chunk)
            ys = pad_to(np.asarray(y[start:start + self.chunk]), self.chunk, fill=-1)
            valid = (np.arange(self.chunk) < len(x) - start).astype(F32)
            outs.append(self.compiled(params, tau_counts, xs, ys.astype(np.int32), valid, active_mask,
                                      np.float32(temp), np.int32(i), self.key))
        outs = jax.device_get(outs)  # the one host transfer of the split
        per_image = concat_chunks(outs, len(x))
        return self.metrics(per_image, outs[0]["step"], y, active_mask, params, tau_counts)

    def metrics(self, per, step_terms, y, active_mask, params, tau_counts) -> SplitResult:
        metrics = self._losses(per, step_terms, y, active_mask, params)
        result = SplitResult(metrics, {}, per)
        labeled = y >= 0
        for key in per["labeled"]:
            if not labeled.any():
                result.status[key] = NO_LABELS
        if self.cfg.model.is_mixture_based:
            self._mixture(result, y, active_mask, params)
        self._attempt(result, ["latent.active_units"],
                      lambda: {"latent.active_units": mc.active_units(per["z_selected"])})
        if self.cfg.model.use_tau_classifier:
            self._tau(result, y, active_mask, tau_counts)
        if "class_pred" in per:
            if labeled.any():
                metrics["classifier.accuracy"] = float(np.mean(per["class_pred"][labeled] == y[labeled]))
            else:
                result.status["classifier.accuracy"] = NO_LABELS
        if "sigma" in per:
            metrics.update(self._sigma(per["sigma"], len(y)))
        return result

    # --- parts of the split's metrics ----------------------------------------------------------------

    @staticmethod
    def _attempt(result: SplitResult, keys, fn) -> None:
        try:
            result.metrics.update(fn())
        except Exception as exc:  # a failed metric never fails the run
            for key in keys:
                result.status[key] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}

    def _losses(self, per, step_terms, y, active_mask, params) -> dict[str, float]:
        """Every loss term over the split; the batch-level terms are recomputed from the split's mean usage."""
        m, n = self.cfg.model, len(y)
        metrics = {k: float(np.sum(v)) / n for k, v in per["image"].items()}
        labeled = y >= 0
        for k, v in per["labeled"].items():
            if labeled.any():
                metrics[k] = float(np.sum(v[labeled])) / labeled.sum()
        metrics.update({k: float(v) for k, v in step_terms.items()})
        if "loss.diversity" in metrics and "responsibilities" in per:  # H of the split's mean usage
            metrics["loss.diversity"] = float(m.component_diversity_weight *
                                              mc.entropy(per["responsibilities"].mean(0)))
        if "loss.usage_balance" in metrics and "responsibilities" in per:
            pi = uniform_if_none(mixture_weights(self.cfg, self.graphdef, params), m.num_components)
            kl = _usage_kl(per["responsibilities"].mean(0), pi, active_mask)
            metrics["loss.usage_balance"] = float(m.usage_balance_weight * kl)
        metrics["loss.total"] = float(sum(v for k, v in metrics.items() if k.startswith("loss.")))
        return metrics

    def _mixture(self, result: SplitResult, y, active_mask, params) -> None:
        m = self.cfg.model
        r = result.per_image["responsibilities"]
        self._attempt(result, ["mixture.K_eff"], lambda: mc.mixture_metrics(r, active_mask))
        if m.learnable_pi:
            pi = mixture_weights(self.cfg, self.graphdef, params)
            self._attempt(result, ["mixture.pi_entropy"], lambda: mc.pi_metrics(pi, active_mask))
        labeled = y >= 0
        if not labeled.any():
            result.status.update({key: NO_LABELS for key in LABEL_KEYS})
            return
        yl, rl = y[labeled], r[labeled]

        def clustering():
            out, method = mc.clustering_metrics(rl, yl, active_mask, m.num_classes)
            out["mixture.specialization"] = mc.specialization(rl, yl, active_mask, m.num_classes)
            result.acc_method = method
            return out
        self._attempt(result, LABEL_KEYS, clustering)

    def _tau(self, result: SplitResult, y, active_mask, tau_counts) -> None:
        per, labeled = result.per_image, y >= 0
        has_labels = bool(labeled.any())
        tau, free = tau_and_free(self.cfg, tau_counts, active_mask)
        pick = (lambda a: a[labeled]) if has_labels else (lambda a: a)
        self._attempt(result, ["tau.accuracy"], lambda: mc.tau_metrics(
            tau, free, active_mask, pick(per["tau_pred"]), pick(per["tau_certainty"]), per["tau_ood"],
            y[labeled] if has_labels else None))
        if not has_labels:
            result.status.update({key: NO_LABELS for key in ("tau.accuracy", "tau.calibration_error")})

    def _sigma(self, s: dict, n: int) -> dict[str, float]:
        """The decoder's predicted pixel noise σ: mean, spread, saturation at its bounds, calibration."""
        count = float(np.sum(s["count"]))
        mean = float(np.sum(s["sum"])) / count
        var = max(float(np.sum(s["sumsq"])) / count - mean * mean, 0.0)
        pixels = float(n * np.prod(self.image_shape))
        return {"uncertainty.sigma_mean": mean, "uncertainty.sigma_std": math.sqrt(var),
                "uncertainty.sigma_saturation": float(np.sum(s["saturated"])) / count,
                "uncertainty.calibration_error": abs(float(np.sum(s["z2"])) / pixels - 1.0)}


def _usage_kl(p_hat: np.ndarray, pi: np.ndarray, active_mask: np.ndarray) -> float:
    """KL(p̂ ‖ π^A) = −H(p̂) − Σ p̂ log π^A over the active components: the usage-balance term of the
    split's mean usage p̂ (the host-side, float64 counterpart of the per-batch ``losses.usage_balance``)."""
    a = active_mask.astype(bool)
    pi_a = pi[a] / pi[a].sum()
    return -float(mc.entropy(p_hat[a])) - float(np.sum(p_hat[a] * np.log(pi_a)))
