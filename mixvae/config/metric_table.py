"""Every logged metric key, declared once as plain data: family, direction, splits, definition, condition.

The table lives in the config package because it is a fact about configurations (which keys a run of
a configuration logs) and because configuration checks read it (``training.monitor`` must name a
logged validation key) without importing ``mixvae.metrics``. ``mixvae.metrics.keys`` is the API the
rest of the package uses; docs/metrics.md is generated from this table.
"""

from __future__ import annotations

from dataclasses import dataclass

from mixvae.config import applicability as A
from mixvae.config.schema import Config

TRAIN, VAL, SUMMARY = "train", "val", "summary"
ALL = frozenset({TRAIN, VAL, SUMMARY})

FAMILIES = ("loss", "clustering", "classifier", "tau", "mixture", "latent", "uncertainty",
            "curriculum", "training")


@dataclass(frozen=True)
class MetricKey:
    name: str
    family: str
    direction: str  # 'min' | 'max' | 'none'
    where: frozenset
    definition: str
    gate: A.Condition  # when the key is logged (None) or why not

    def applies(self, cfg: Config, num_labeled: int | None = None) -> str | None:
        n = cfg.data.num_labeled if num_labeled is None else num_labeled
        return self.gate(cfg, n)


def _k(name, family, direction, where, definition, gate=A.always):
    return MetricKey(name, family, direction, frozenset(where), definition, gate)


_TVS = (TRAIN, VAL, SUMMARY)
_VS = (VAL, SUMMARY)

DECLARED: list[MetricKey] = [
    # losses
    _k("loss.recon", "loss", "min", _TVS, "weighted expected per-component negative log-likelihood"),
    _k("loss.kl_z", "loss", "min", _TVS, "kl_weight · mean latent KL", A.latent_kl),
    _k("loss.kl_c", "loss", "min", _TVS, "kl_c_weight · KL(r ‖ π^A)", A.kl_c_term),
    _k("loss.kl_c_logit_mog", "loss", "min", _TVS, "λ · negative log logit-MoG prior of the logits", A.logit_mog_term),
    _k("loss.dirichlet", "loss", "min", _TVS, "Dirichlet(α) prior on π", A.dirichlet),
    _k("loss.diversity", "loss", "min", _TVS, "component_diversity_weight · H(mean r)", A.diversity_term),
    _k("loss.usage_balance", "loss", "min", _TVS, "usage_balance_weight · KL(batch-mean r ‖ π^A)",
       A.usage_balance_term),
    _k("loss.neighbour", "loss", "none", (TRAIN,), "neighbour_weight · −log Σ_k r_k(x) r_k(x′), x′ one of the "
       "image's nearest training images; not part of loss.total", A.neighbour_term),
    _k("loss.cluster_init", "loss", "none", (TRAIN,), "γ(n) · cluster_init_weight · CE(r, warm-start cluster); "
       "not part of loss.total", A.warm_start_clustering),
    _k("loss.classifier", "loss", "min", _TVS, "label_weight · cross-entropy over labeled images", A.classifier_loss),
    _k("loss.l1", "loss", "min", _TVS, "l1_weight · Σ|kernel|", A.l1_term),
    _k("loss.total", "loss", "min", _TVS, "sum of the enabled loss terms (schedule factors 1)"),
    _k("loss.objective", "loss", "min", (TRAIN,), "what the optimiser minimised (schedules applied)"),
    # mixture
    _k("mixture.K_eff", "mixture", "none", _TVS, "exp(H(mean r)) over the active set", A.mixture_prior),
    _k("mixture.active_components", "mixture", "none", _TVS, "#components with mean r > 0.01", A.mixture_prior),
    _k("mixture.dead_components", "mixture", "min", _TVS, "#active components that are nobody's argmax",
       A.mixture_prior),
    _k("mixture.responsibility_confidence_mean", "mixture", "none", _TVS, "mean of max_k r_k(x)", A.mixture_prior),
    _k("mixture.component_entropy", "mixture", "none", _TVS, "mean of H(r(x))", A.mixture_prior),
    _k("mixture.routing_confidence_mean", "mixture", "none", (TRAIN,), "mean of max_k ŝ_k (soft Gumbel sample)",
       A.gumbel_routing),
    _k("mixture.pi_entropy", "mixture", "none", _VS, "H(π^A)", A.learned_pi),
    _k("mixture.pi_max", "mixture", "none", _VS, "max of π^A", A.learned_pi),
    _k("mixture.pi_min", "mixture", "none", _VS, "min of π^A", A.learned_pi),
    _k("mixture.specialization", "mixture", "max", _VS, "Σ_k p̄_k · max_c P(c|k)", A.mixture_prior),
    # clustering
    _k("clustering.nmi", "clustering", "max", _VS, "normalized mutual information of argmax r vs labels",
       A.mixture_prior),
    _k("clustering.ari", "clustering", "max", _VS, "adjusted Rand index of argmax r vs labels", A.mixture_prior),
    _k("clustering.acc", "clustering", "max", _VS, "Hungarian accuracy (K = C) or purity (K ≠ C)", A.mixture_prior),
    # latent
    _k("latent.active_units", "latent", "max", _VS, "#latent dims with Var(E[z|x]) > 0.01"),
    # τ
    _k("tau.accuracy", "tau", "max", _VS, "share of images whose τ label is right", A.tau_classifier),
    _k("tau.certainty_mean", "tau", "none", _VS, "mean of max_c p(c|x)", A.tau_classifier),
    _k("tau.certainty_std", "tau", "none", _VS, "std of max_c p(c|x)", A.tau_classifier),
    _k("tau.certainty_min", "tau", "none", _VS, "min of max_c p(c|x)", A.tau_classifier),
    _k("tau.certainty_max", "tau", "none", _VS, "max of max_c p(c|x)", A.tau_classifier),
    _k("tau.ood_score_mean", "tau", "none", _VS, "mean OOD score", A.tau_classifier),
    _k("tau.ood_score_std", "tau", "none", _VS, "std of the OOD score", A.tau_classifier),
    _k("tau.calibration_error", "tau", "min", _VS, "expected calibration error, 10 bins", A.tau_classifier),
    _k("tau.label_coverage", "tau", "max", _VS, "labels claimed by some non-free component", A.tau_classifier),
    _k("tau.components_per_label_mean", "tau", "none", _VS, "mean #components per label with τ > 0.15",
       A.tau_classifier),
    _k("tau.matrix_sparsity", "tau", "none", _VS, "share of τ entries below 0.05", A.tau_classifier),
    _k("tau.num_free_channels", "tau", "none", _VS, "components with too little labeled evidence", A.tau_classifier),
    # classifier head
    _k("classifier.accuracy", "classifier", "max", _VS, "accuracy of the classifier head", A.classifier_head),
    # uncertainty
    _k("uncertainty.sigma_mean", "uncertainty", "none", _VS, "mean of σ̂", A.heteroscedastic),
    _k("uncertainty.sigma_std", "uncertainty", "none", _VS, "std of σ̂", A.heteroscedastic),
    _k("uncertainty.sigma_saturation", "uncertainty", "min", _VS, "share of σ within 1 % of the range ends",
       A.heteroscedastic),
    _k("uncertainty.calibration_error", "uncertainty", "min", _VS, "|mean ((x − μ)/σ)² − 1|", A.heteroscedastic),
    # curriculum
    _k("curriculum.k_active", "curriculum", "none", (TRAIN,), "active components during the epoch", A.curriculum),
    _k("curriculum.unlocked", "curriculum", "none", (TRAIN,), "1 in the first epoch of a newly opened component",
       A.curriculum),
    _k("curriculum.kick_active", "curriculum", "none", (TRAIN,), "1 in kick epochs", A.curriculum),
    _k("curriculum.final_k_active", "curriculum", "none", (SUMMARY,), "k_active in the last trained epoch",
       A.curriculum),
    _k("curriculum.best_k_active", "curriculum", "none", (SUMMARY,), "k_active of the restored best epoch",
       A.curriculum),
    _k("curriculum.unlock_count", "curriculum", "none", (SUMMARY,), "number of unlocks", A.curriculum),
    _k("curriculum.kick_epochs_total", "curriculum", "none", (SUMMARY,), "number of kick epochs", A.curriculum),
    _k("curriculum.stopped", "curriculum", "none", (SUMMARY,), "1 if the curriculum stopped opening components",
       A.curriculum),
    # training
    _k("training.epoch_time_sec", "training", "none", (TRAIN,), "wall time of the epoch"),
    _k("training.steps_per_sec", "training", "none", (TRAIN, SUMMARY), "train steps per second inside the epoch function"),
    _k("training.gumbel_temperature", "training", "none", (TRAIN,), "Gumbel temperature of the epoch",
       A.gumbel_routing),
    _k("training.kl_z_scale", "training", "none", (TRAIN,), "KL_z warm-up factor β", A.latent_kl),
    _k("training.kl_c_scale", "training", "none", (TRAIN,), "component-regulariser factor κ",
       A.any_component_regularizer),
    _k("training.cluster_init_scale", "training", "none", (TRAIN,), "warm-start clustering factor γ",
       A.warm_start_clustering),
    _k("training.best_epoch", "training", "none", (SUMMARY,), "epoch of the restored snapshot"),
    _k("training.best_monitor_value", "training", "none", (SUMMARY,), "monitor value at the best epoch"),
    _k("training.epochs_completed", "training", "none", (SUMMARY,), "number of epochs trained"),
    _k("training.stopped_early", "training", "none", (SUMMARY,), "1 when patience ended training"),
    _k("training.time_sec", "training", "none", (SUMMARY,), "wall time from data loading to the final evaluation"),
    _k("training.compile_time_sec", "training", "none", (SUMMARY,), "wall time of the ahead-of-time compilations"),
    _k("training.peak_rss_mb", "training", "none", (SUMMARY,), "peak resident memory of the process"),
]

KEYS: dict[str, MetricKey] = {k.name: k for k in DECLARED}


def enabled(cfg: Config, where: str, num_labeled: int | None = None) -> list[str]:
    """Keys logged under ``where`` ('train', 'val' or 'summary') for this configuration."""
    return [k.name for k in DECLARED if where in k.where and k.applies(cfg, num_labeled) is None]


def direction(name: str) -> str:
    """Direction of a bare or prefixed key ('none' when unknown)."""
    name = name.split("/", 1)[-1]
    return KEYS[name].direction if name in KEYS else "none"
