"""Cross-field rules: what a config may not combine (errors) and what it probably did not mean (warnings).

This is validation stage 2; it runs after the schema has accepted every field. ``check_rules`` returns
every error and warning of a config together, one line each, ``<dotted key>: <problem>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mixvae.config import metric_table as mt
from mixvae.config.applicability import APPLIES
from mixvae.config.flat import default_in_context, defaults_flat, flat_values
from mixvae.config.preflight import device_problems, preflight_problems, uneven_batches
from mixvae.config.schema import Config
from mixvae.tracking_uri import resolve_tracking_uri

_COMPONENT_DECODING_PRIORS = "prior_type mixture or geometric_mog"


@dataclass
class Findings:
    """Errors and warnings of one config, in the order they were found."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, key: str, msg: str) -> None:
        self.errors.append(f"{key}: {msg}")

    def warn(self, key: str, msg: str) -> None:
        self.warnings.append(f"{key}: {msg}")


def check_rules(cfg: Config, explicit: set[str], set_values: dict[str, Any] | None = None,
                tracking_uri: str | None = None) -> tuple[list[str], list[str]]:
    """Cross-field errors and warnings of ``cfg``: model, training, curriculum and tracking rules, then
    the "has no effect" warnings for explicitly set keys.

    ``explicit``: the dotted keys set in the file or by an override. ``set_values``: their values as
    written (before resolution, e.g. ``auto``), so that a default written out never warns.
    ``tracking_uri``: the --tracking-uri option; the tracking rules check the URI it resolves to.
    """
    found = Findings()
    _component_rules(cfg, found)
    _classifier_and_prior_rules(cfg, found)
    _likelihood_and_geometry_rules(cfg, found)
    _monitor_rules(cfg, found)
    _device_rules(cfg, found)
    _precision_rules(cfg, found)
    if cfg.curriculum.enabled:
        _curriculum_rules(cfg, explicit, found)
    _tracking_rules(cfg, tracking_uri, found)
    _no_effect_warnings(cfg, explicit, set_values or {}, found)
    return found.errors, found.warnings


# --- model -------------------------------------------------------------------------------------

def _component_rules(cfg: Config, found: Findings) -> None:
    """Latent layout, component count, decoder conditioning, routing and the component regulariser."""
    m = cfg.model
    prior, comp_dec = m.prior_type, m.is_component_decoding
    if m.latent_layout == "decentralized" and not comp_dec:
        found.error("model.latent_layout", f"'decentralized' needs {_COMPONENT_DECODING_PRIORS} (got '{prior}')")
    if m.is_mixture_based and m.num_components < 2:
        found.error("model.num_components", f"a mixture-based prior needs at least 2 components "
                    f"(got {m.num_components}); use prior_type standard for a single component")
    if prior in ("standard", "vamp") and m.decoder_conditioning != "none":
        found.error("model.decoder_conditioning", f"prior_type '{prior}' has no component embeddings; use none "
                    f"(got '{m.decoder_conditioning}')")
    if m.use_gumbel_softmax and not comp_dec:
        found.error("model.use_gumbel_softmax", f"routing only exists where components are decoded "
                    f"({_COMPONENT_DECODING_PRIORS}; got '{prior}')")
    if m.use_gumbel_softmax and m.gumbel_temperature_min > m.gumbel_temperature:
        found.error("model.gumbel_temperature_min", f"the minimum temperature {m.gumbel_temperature_min:g} "
                    f"exceeds the initial one {m.gumbel_temperature:g}")
    if m.top_m_gating > 0 and not comp_dec:
        found.error("model.top_m_gating", f"top-M gating needs per-component decoding "
                    f"({_COMPONENT_DECODING_PRIORS}; got '{prior}')")
    if m.top_m_gating > m.num_components:
        found.error("model.top_m_gating", f"M must be ≤ K (M = {m.top_m_gating}, K = {m.num_components})")
    if m.c_regularizer in ("logit_mog", "both") and not comp_dec:
        found.error("model.c_regularizer", f"the logit-MoG prior needs encoder component logits "
                    f"({_COMPONENT_DECODING_PRIORS}; got '{prior}')")


def _classifier_and_prior_rules(cfg: Config, found: Findings) -> None:
    """τ needs components, labels and K ≥ C; a learnable π and its Dirichlet prior need a mixture."""
    m = cfg.model
    prior = m.prior_type
    if m.use_tau_classifier and prior == "standard":
        found.error("model.use_tau_classifier", "τ needs a mixture-based prior (got 'standard')")
    if m.use_tau_classifier and m.num_components < m.num_classes:
        found.error("model.use_tau_classifier", f"τ needs K ≥ C (K = {m.num_components}, C = {m.num_classes})")
    if m.use_tau_classifier and cfg.data.num_labeled == 0:
        found.error("model.use_tau_classifier", "τ needs labeled training images; set data.num_labeled > 0")
    if m.learnable_pi and prior in ("standard", "vamp"):
        found.error("model.learnable_pi", f"π is fixed for prior_type '{prior}'")
    if m.dirichlet_alpha is not None and not m.learnable_pi:
        found.error("model.dirichlet_alpha", "a Dirichlet prior only acts on a learnable π; "
                    "set model.learnable_pi: true")


def _is_square(n: int) -> bool:
    r = int(round(n ** 0.5))
    return r * r == n


def _likelihood_and_geometry_rules(cfg: Config, found: Findings) -> None:
    """The Gaussian output and its σ bounds; the geometric prior's layout; two warnings on routing."""
    m = cfg.model
    if m.use_heteroscedastic_decoder and m.reconstruction_loss == "bce":
        found.error("model.use_heteroscedastic_decoder",
                    "heteroscedastic output is Gaussian; use reconstruction_loss: mse")
    if m.sigma_max <= m.sigma_min:
        found.error("model.sigma_max", f"σ bounds are empty (sigma_min {m.sigma_min:g} ≥ sigma_max {m.sigma_max:g})")
    geometric = m.prior_type == "geometric_mog"
    if geometric and m.geometric_arrangement == "grid" and not _is_square(m.num_components):
        lo = int(m.num_components ** 0.5)
        found.error("model.geometric_arrangement", f"'grid' needs a square number of components "
                    f"(got {m.num_components}; nearest squares {lo * lo}, {(lo + 1) ** 2})")
    if geometric and m.latent_dim < 2:
        found.error("model.latent_dim", f"geometric_mog centres need two dimensions (got {m.latent_dim})")
    if m.is_component_decoding and m.latent_layout == "shared" and m.decoder_conditioning == "none":
        found.warn("model.decoder_conditioning",
                   "all components decode identically; routing cannot affect reconstruction")
    if m.component_diversity_weight > 0:
        found.warn("model.component_diversity_weight", "a positive weight concentrates usage and favours collapse")


# --- training ----------------------------------------------------------------------------------

def _monitor_rules(cfg: Config, found: Findings) -> None:
    """Early stopping watches a validation key this config logs, in that key's direction."""
    t = cfg.training
    val_keys = [f"val/{k}" for k in mt.enabled(cfg, mt.VAL)]
    if t.monitor not in val_keys:
        found.error("training.monitor", f"'{t.monitor}' is not a per-epoch validation key of this configuration; "
                    f"enabled: {', '.join(val_keys)}")
        return
    direction = mt.direction(t.monitor)
    if t.monitor_mode == "auto" and direction == "none":
        found.error("training.monitor_mode", f"'{t.monitor}' has no declared direction; set monitor_mode min or max")
    elif t.monitor_mode != "auto" and direction != "none" and t.monitor_mode != direction:
        found.warn("training.monitor_mode",
                   f"'{t.monitor_mode}' contradicts the direction of {t.monitor} ({direction})")


def _device_rules(cfg: Config, found: Findings) -> None:
    """Data parallelism splits every batch evenly over the devices: an explicit count divides the
    training and evaluation batch sizes; the count itself, and 'auto', are checked against this host's
    devices (config/preflight.py)."""
    n = cfg.training.devices
    if n != "auto":
        for key, msg in uneven_batches(cfg, n, f"training.devices = {n}"):
            found.error(key, msg)
    for key, msg in device_problems(cfg):
        found.error(key, msg)


def _precision_rules(cfg: Config, found: Findings) -> None:
    """The bfloat16 decoder saves memory traffic on a GPU; on the CPU backend it only costs time."""
    if cfg.training.decode_dtype != "bfloat16":
        return
    import jax
    if jax.default_backend() == "cpu":
        found.warn("training.decode_dtype", "bfloat16 on the CPU is slower than float32 there (XLA:CPU converts "
                                            "rather than computing in bfloat16; docs/performance.md); it pays "
                                            "on a GPU")


# --- curriculum --------------------------------------------------------------------------------

def _curriculum_rules(cfg: Config, explicit: set[str], found: Findings) -> None:
    """The curriculum opens components one by one: it needs component logits, a loss key to watch for
    plateaus, routing for its kick, and no warm start that uses every component from the start."""
    m, t, cur = cfg.model, cfg.training, cfg.curriculum
    if not m.is_component_decoding:
        found.error("curriculum.enabled", f"the curriculum masks component logits; needs "
                    f"{_COMPONENT_DECODING_PRIORS} (got '{m.prior_type}')")
    if not (cur.k_active_init <= cur.k_active_max <= m.num_components):
        found.error("curriculum.k_active_max", f"needs k_active_init ≤ k_active_max ≤ K (got {cur.k_active_init}, "
                    f"{cur.k_active_max}, {m.num_components})")
    loss_keys = [f"{w}/{k}" for w in (mt.TRAIN, mt.VAL) for k in mt.enabled(cfg, w)
                 if k.startswith("loss.") and k != "loss.objective"]
    if cur.unlock.monitor not in loss_keys:
        found.error("curriculum.unlock.monitor", f"'{cur.unlock.monitor}' is not an enabled per-epoch loss key; "
                    f"enabled: {', '.join(loss_keys)}")
    if "curriculum.kick.gumbel_temperature" in explicit and not m.use_gumbel_softmax:
        found.error("curriculum.kick.gumbel_temperature",
                    "the kick has nothing to act on: model.use_gumbel_softmax is false")
    if "curriculum.kick.disable_straight_through" in explicit and (
            not m.use_gumbel_softmax or not m.use_straight_through_gumbel):
        found.error("curriculum.kick.disable_straight_through",
                    "the kick has nothing to act on: straight-through Gumbel routing is off")
    if m.component_diversity_weight < 0:
        found.warn("model.component_diversity_weight", "rewarding spread works against the curriculum; use 0")
    if m.cluster_init != "none":
        found.error("model.cluster_init", "the warm-start clustering assigns images to all K components, but the "
                    "curriculum starts with few of them open; use cluster_init: none with the curriculum")
    if t.patience is not None and t.patience <= cur.unlock.patience + cur.kick.epochs:
        found.warn("training.patience", f"{t.patience} is not larger than unlock.patience + kick.epochs "
                   f"({cur.unlock.patience + cur.kick.epochs}); early stopping can end training before an "
                   "unlock pays off")
    regularized = mt.KEYS["loss.kl_c"].applies(cfg) is None or mt.KEYS["loss.kl_c_logit_mog"].applies(cfg) is None
    if t.monitor == "val/loss.total" and regularized:
        found.warn("training.monitor",
                   "the component regularisers depend on the active-set size; monitor val/loss.recon")


# --- tracking ----------------------------------------------------------------------------------

def _tracking_rules(cfg: Config, tracking_uri: str | None, found: Findings) -> None:
    """What training needs from the tracking store, MLflow's names and the output directories
    (config/preflight.py), checked on the URI the run would use: --tracking-uri, then
    MLFLOW_TRACKING_URI, then tracking.uri, else the working directory's default store."""
    uri, uri_source = resolve_tracking_uri(tracking_uri, cfg.tracking.uri)
    for key, msg in preflight_problems(cfg, uri, uri_source):
        found.error(key, msg)


# --- keys set without effect -------------------------------------------------------------------

def _no_effect_warnings(cfg: Config, explicit: set[str], written: dict[str, Any], found: Findings) -> None:
    """A key set explicitly to something other than its default, which this config ignores, warns
    "has no effect" with the reason. Keys an error already names are left to that error."""
    schema_defaults = defaults_flat()
    resolved_defaults = flat_values(Config())
    values = flat_values(cfg)
    covered = {e.split(":")[0] for e in found.errors}
    for key in sorted(explicit):
        if key not in APPLIES or key in covered:
            continue
        if key in written and _same(written[key], schema_defaults.get(key)):
            continue  # the default as written (auto, null, …)
        if _same(values.get(key), default_in_context(cfg, key, resolved_defaults)):
            continue  # the value the default resolves to in this configuration
        reason = APPLIES[key](cfg, cfg.data.num_labeled)
        if reason:
            found.warnings.append(f"{key} has no effect: {reason}")


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b
