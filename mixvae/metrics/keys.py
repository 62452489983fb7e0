"""Every canonical metric key, declared once.

Training, tracking, report and compare import keys from here; a test fails when anything is logged
under a key that is not declared. Each key carries its family, its direction, where it is logged and
an applicability predicate that returns ``None`` when the key applies or the reason it is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from mixvae.config import Config

TRAIN, VAL, SUMMARY = "train", "val", "summary"
ALL = frozenset({TRAIN, VAL, SUMMARY})

# A channel counts as used when its mean responsibility exceeds this (mixture.active_components).
ACTIVE_USAGE_THRESHOLD = 0.01

FAMILIES = ("loss", "clustering", "classifier", "tau", "mixture", "latent", "uncertainty",
            "curriculum", "training")

Gate = Callable[["Config", int], "str | None"]  # (config, num_labeled) -> None | reason


@dataclass(frozen=True)
class MetricKey:
    name: str
    family: str
    direction: str  # 'min' | 'max' | 'none'
    where: frozenset
    definition: str
    gate: Gate

    def applies(self, cfg: "Config", num_labeled: int | None = None) -> str | None:
        n = cfg.data.num_labeled if num_labeled is None else num_labeled
        return self.gate(cfg, n)


# --- gates -------------------------------------------------------------------------------------

def _always(cfg, n):
    return None


def _mixture(cfg, n):
    if cfg.model.prior_type == "standard":
        return "prior_type is 'standard': no mixture components"
    return None


def _gumbel(cfg, n):
    r = _mixture(cfg, n)
    if r:
        return r
    if not cfg.model.use_gumbel_softmax:
        return "model.use_gumbel_softmax is false"
    return None


def _learnable_pi(cfg, n):
    r = _mixture(cfg, n)
    if r:
        return r
    if not cfg.model.learnable_pi:
        return "π is fixed and uniform (model.learnable_pi is false)"
    return None


def _tau(cfg, n):
    if not cfg.model.use_tau_classifier:
        return "model.use_tau_classifier is false"
    return None


def _head(cfg, n):
    if cfg.model.use_tau_classifier:
        return "model.use_tau_classifier is true: labels are predicted by τ"
    if n == 0:
        return "data.num_labeled is 0"
    if cfg.model.label_weight == 0:
        return "model.label_weight is 0"
    return None


def _hetero(cfg, n):
    if not cfg.model.use_heteroscedastic_decoder:
        return "model.use_heteroscedastic_decoder is false"
    return None


def _curriculum(cfg, n):
    if not cfg.curriculum.enabled:
        return "curriculum.enabled is false"
    return None


def _kl_z(cfg, n):
    return "model.kl_weight is 0" if cfg.model.kl_weight == 0 else None


def _kl_c(cfg, n):
    m = cfg.model
    if not m.is_component_decoding:
        return f"prior_type is '{m.prior_type}': no component logits"
    if m.c_regularizer not in ("categorical", "both"):
        return f"model.c_regularizer is '{m.c_regularizer}'"
    if m.kl_c_weight == 0:
        return "model.kl_c_weight is 0"
    return None


def _logit_mog(cfg, n):
    m = cfg.model
    if not m.is_component_decoding:
        return f"prior_type is '{m.prior_type}': no component logits"
    if m.c_regularizer not in ("logit_mog", "both"):
        return f"model.c_regularizer is '{m.c_regularizer}'"
    if m.c_logit_prior_weight == 0:
        return "model.c_logit_prior_weight is 0"
    return None


def _dirichlet(cfg, n):
    return "model.dirichlet_alpha is null" if cfg.model.dirichlet_alpha is None else None


def _diversity(cfg, n):
    r = _mixture(cfg, n)
    if r:
        return r
    return "model.component_diversity_weight is 0" if cfg.model.component_diversity_weight == 0 else None


def _usage_balance(cfg, n):
    r = _mixture(cfg, n)
    if r:
        return r
    return "model.usage_balance_weight is 0" if cfg.model.usage_balance_weight == 0 else None


def _cluster_init(cfg, n):
    r = _mixture(cfg, n)
    if r:
        return r
    return "model.cluster_init is 'none'" if cfg.model.cluster_init == "none" else None


def _classifier_loss(cfg, n):
    if n == 0:
        return "data.num_labeled is 0"
    if cfg.model.label_weight == 0:
        return "model.label_weight is 0"
    return None


def _l1(cfg, n):
    return "model.l1_weight is 0" if cfg.model.l1_weight == 0 else None


def _temperature(cfg, n):
    return _gumbel(cfg, n)


def _kl_z_scale(cfg, n):
    return _kl_z(cfg, n)


def _kl_c_scale(cfg, n):
    if _kl_c(cfg, n) and _logit_mog(cfg, n):
        return "no component regulariser is enabled"
    return None


def _decentralized(cfg, n):
    if cfg.model.latent_layout != "decentralized":
        return "model.latent_layout is 'shared'"
    return None


# --- the declaration -----------------------------------------------------------------------------

def _k(name, family, direction, where, definition, gate=_always):
    return MetricKey(name, family, direction, frozenset(where), definition, gate)


_TVS = (TRAIN, VAL, SUMMARY)
_VS = (VAL, SUMMARY)

_DECLARED = [
    # losses
    _k("loss.recon", "loss", "min", _TVS, "weighted expected per-component negative log-likelihood"),
    _k("loss.kl_z", "loss", "min", _TVS, "kl_weight · mean latent KL", _kl_z),
    _k("loss.kl_c", "loss", "min", _TVS, "kl_c_weight · KL(r ‖ π^A)", _kl_c),
    _k("loss.kl_c_logit_mog", "loss", "min", _TVS, "λ · negative log logit-MoG prior of the logits", _logit_mog),
    _k("loss.dirichlet", "loss", "min", _TVS, "Dirichlet(α) prior on π", _dirichlet),
    _k("loss.diversity", "loss", "min", _TVS, "component_diversity_weight · H(mean r)", _diversity),
    _k("loss.usage_balance", "loss", "min", _TVS, "usage_balance_weight · KL(batch-mean r ‖ π^A)", _usage_balance),
    _k("loss.cluster_init", "loss", "none", (TRAIN,), "γ(n) · cluster_init_weight · CE(r, warm-start cluster); "
       "not part of loss.total", _cluster_init),
    _k("loss.classifier", "loss", "min", _TVS, "label_weight · cross-entropy over labeled images", _classifier_loss),
    _k("loss.l1", "loss", "min", _TVS, "l1_weight · Σ|kernel|", _l1),
    _k("loss.total", "loss", "min", _TVS, "sum of the enabled loss terms (schedule factors 1)"),
    _k("loss.objective", "loss", "min", (TRAIN,), "what the optimiser minimised (schedules applied)"),
    # mixture
    _k("mixture.K_eff", "mixture", "none", _TVS, "exp(H(mean r)) over the active set", _mixture),
    _k("mixture.active_components", "mixture", "none", _TVS, "#channels with mean r > 0.01", _mixture),
    _k("mixture.dead_components", "mixture", "min", _TVS, "#active channels that are nobody's argmax", _mixture),
    _k("mixture.responsibility_confidence_mean", "mixture", "none", _TVS, "mean of max_k r_k(x)", _mixture),
    _k("mixture.component_entropy", "mixture", "none", _TVS, "mean of H(r(x))", _mixture),
    _k("mixture.routing_confidence_mean", "mixture", "none", (TRAIN,), "mean of max_k ŝ_k (soft Gumbel sample)", _gumbel),
    _k("mixture.pi_entropy", "mixture", "none", _VS, "H(π^A)", _learnable_pi),
    _k("mixture.pi_max", "mixture", "none", _VS, "max of π^A", _learnable_pi),
    _k("mixture.pi_min", "mixture", "none", _VS, "min of π^A", _learnable_pi),
    _k("mixture.specialization", "mixture", "max", _VS, "Σ_k p̄_k · max_c P(c|k)", _mixture),
    # clustering
    _k("clustering.nmi", "clustering", "max", _VS, "normalized mutual information of argmax r vs labels", _mixture),
    _k("clustering.ari", "clustering", "max", _VS, "adjusted Rand index of argmax r vs labels", _mixture),
    _k("clustering.acc", "clustering", "max", _VS, "Hungarian accuracy (K = C) or purity (K ≠ C)", _mixture),
    # latent
    _k("latent.active_units", "latent", "max", _VS, "#latent dims with Var(E[z|x]) > 0.01"),
    # τ
    _k("tau.accuracy", "tau", "max", _VS, "share of images whose τ label is right", _tau),
    _k("tau.certainty_mean", "tau", "none", _VS, "mean of max_c p(c|x)", _tau),
    _k("tau.certainty_std", "tau", "none", _VS, "std of max_c p(c|x)", _tau),
    _k("tau.certainty_min", "tau", "none", _VS, "min of max_c p(c|x)", _tau),
    _k("tau.certainty_max", "tau", "none", _VS, "max of max_c p(c|x)", _tau),
    _k("tau.ood_score_mean", "tau", "none", _VS, "mean OOD score", _tau),
    _k("tau.ood_score_std", "tau", "none", _VS, "std of the OOD score", _tau),
    _k("tau.calibration_error", "tau", "min", _VS, "expected calibration error, 10 bins", _tau),
    _k("tau.label_coverage", "tau", "max", _VS, "labels claimed by some non-free channel", _tau),
    _k("tau.components_per_label_mean", "tau", "none", _VS, "mean #channels per label with τ > 0.15", _tau),
    _k("tau.matrix_sparsity", "tau", "none", _VS, "share of τ entries below 0.05", _tau),
    _k("tau.num_free_channels", "tau", "none", _VS, "channels with too little labeled evidence", _tau),
    # classifier head
    _k("classifier.accuracy", "classifier", "max", _VS, "accuracy of the classifier head", _head),
    # uncertainty
    _k("uncertainty.sigma_mean", "uncertainty", "none", _VS, "mean of σ̂", _hetero),
    _k("uncertainty.sigma_std", "uncertainty", "none", _VS, "std of σ̂", _hetero),
    _k("uncertainty.sigma_saturation", "uncertainty", "min", _VS, "share of σ within 1 % of the range ends", _hetero),
    _k("uncertainty.calibration_error", "uncertainty", "min", _VS, "|mean ((x − μ)/σ)² − 1|", _hetero),
    # curriculum
    _k("curriculum.k_active", "curriculum", "none", (TRAIN,), "active channels during the epoch", _curriculum),
    _k("curriculum.unlocked", "curriculum", "none", (TRAIN,), "1 in the first epoch of a newly opened channel", _curriculum),
    _k("curriculum.kick_active", "curriculum", "none", (TRAIN,), "1 in kick epochs", _curriculum),
    _k("curriculum.final_k_active", "curriculum", "none", (SUMMARY,), "k_active in the last trained epoch", _curriculum),
    _k("curriculum.best_k_active", "curriculum", "none", (SUMMARY,), "k_active of the restored best epoch", _curriculum),
    _k("curriculum.unlock_count", "curriculum", "none", (SUMMARY,), "number of unlocks", _curriculum),
    _k("curriculum.kick_epochs_total", "curriculum", "none", (SUMMARY,), "number of kick epochs", _curriculum),
    _k("curriculum.stopped", "curriculum", "none", (SUMMARY,), "1 if the curriculum stopped opening channels", _curriculum),
    # training
    _k("training.epoch_time_sec", "training", "none", (TRAIN,), "wall time of the epoch"),
    _k("training.steps_per_sec", "training", "none", (TRAIN, SUMMARY), "train steps per second inside the epoch function"),
    _k("training.gumbel_temperature", "training", "none", (TRAIN,), "Gumbel temperature of the epoch", _temperature),
    _k("training.kl_z_scale", "training", "none", (TRAIN,), "KL_z warm-up factor β", _kl_z_scale),
    _k("training.kl_c_scale", "training", "none", (TRAIN,), "component-regulariser factor κ", _kl_c_scale),
    _k("training.cluster_init_scale", "training", "none", (TRAIN,), "warm-start clustering factor γ", _cluster_init),
    _k("training.best_epoch", "training", "none", (SUMMARY,), "epoch of the restored snapshot"),
    _k("training.best_monitor_value", "training", "none", (SUMMARY,), "monitor value at the best epoch"),
    _k("training.epochs_completed", "training", "none", (SUMMARY,), "number of epochs trained"),
    _k("training.stopped_early", "training", "none", (SUMMARY,), "1 when patience ended training"),
    _k("training.time_sec", "training", "none", (SUMMARY,), "wall time from data loading to the final evaluation"),
    _k("training.compile_time_sec", "training", "none", (SUMMARY,), "wall time of the ahead-of-time compilations"),
    _k("training.peak_rss_mb", "training", "none", (SUMMARY,), "peak resident memory of the process"),
]

KEYS: dict[str, MetricKey] = {k.name: k for k in _DECLARED}

LOSS_TERMS = tuple(k for k in KEYS if k.startswith("loss.") and k not in ("loss.total", "loss.objective"))

# Summary-key families that need labels in the split (skipped otherwise).
NEEDS_LABELS = frozenset({"clustering.nmi", "clustering.ari", "clustering.acc", "mixture.specialization",
                          "tau.accuracy", "tau.calibration_error", "classifier.accuracy"})


def enabled(cfg: "Config", where: str, num_labeled: int | None = None) -> list[str]:
    """Keys logged under ``where`` ('train', 'val' or 'summary') for this configuration."""
    return [k.name for k in _DECLARED if where in k.where and k.applies(cfg, num_labeled) is None]


def disabled_reasons(cfg: "Config", num_labeled: int | None = None) -> dict[str, str]:
    """Every declared key that does not apply, with the reason."""
    out = {}
    for k in _DECLARED:
        reason = k.applies(cfg, num_labeled)
        if reason is not None:
            out[k.name] = reason
    return out


def is_declared(logged_key: str) -> bool:
    """True for 'train/<key>', 'val/<key>' or '<key>' with a declared key in the right place."""
    if "/" in logged_key:
        where, name = logged_key.split("/", 1)
        return name in KEYS and where in KEYS[name].where
    return logged_key in KEYS and SUMMARY in KEYS[logged_key].where


def direction(name: str) -> str:
    """Direction of a bare or prefixed key ('none' when unknown)."""
    name = name.split("/", 1)[-1]
    return KEYS[name].direction if name in KEYS else "none"


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta`` in the key's direction.

    ``mode`` is 'min' (smaller is better) or 'max' (larger is better; any mode other than 'min' is
    read as 'max', as early stopping always did). With no best yet (``None``)
    every value improves. A NaN value or best never improves (every comparison with NaN is false).
    Early stopping, the curriculum's plateau test and the report's "still improving" diagnosis all
    use this one rule.
    """
    if best is None:
        return True
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta
