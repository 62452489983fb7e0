"""Which config keys and which loss terms and metrics apply to a configuration, with the reason when not.

Each condition below is a function ``(config, num_labeled) -> None | reason``: ``None`` when the thing
it guards is in effect, otherwise one short sentence naming the setting that switches it off.
``num_labeled`` is the number of labeled training images (``data.num_labeled`` before the data is
read, the count actually drawn afterwards). The same conditions decide

- whether an explicitly set config key has any effect (``APPLIES``, the "has no effect" warnings),
- which loss terms enter the objective and which metric keys are logged (``mixvae.config.metric_table``).
"""

from __future__ import annotations

from typing import Callable

from mixvae.config.flat import schema_keys
from mixvae.config.schema import BUNDLED_DATASETS, DOWNLOADABLE_DATASETS, Config

Condition = Callable[[Config, int], "str | None"]


def always(cfg: Config, n: int) -> str | None:
    return None


def first_reason(*conditions: Condition) -> Condition:
    """A condition that holds when all of ``conditions`` hold; the reason is the first one that fails."""
    def condition(cfg: Config, n: int) -> str | None:
        for c in conditions:
            reason = c(cfg, n)
            if reason is not None:
                return reason
        return None
    return condition


# --- the prior ---------------------------------------------------------------------------------

def mixture_prior(cfg: Config, n: int) -> str | None:
    """There are several mixture components (every prior but 'standard')."""
    m = cfg.model
    return None if m.is_mixture_based else f"model.prior_type is '{m.prior_type}': no mixture components"


def component_decoding(cfg: Config, n: int) -> str | None:
    """The encoder gives component logits and every component is decoded (mixture, geometric_mog)."""
    m = cfg.model
    return None if m.is_component_decoding else f"model.prior_type is '{m.prior_type}': no component logits"


def prior_is(prior_type: str) -> Condition:
    """Settings of one prior family only (vamp, geometric_mog)."""
    def condition(cfg: Config, n: int) -> str | None:
        p = cfg.model.prior_type
        return None if p == prior_type else f"model.prior_type is '{p}'"
    return condition


def _learnable_pi(cfg: Config, n: int) -> str | None:
    return None if cfg.model.learnable_pi else "π is fixed and uniform (model.learnable_pi is false)"


def _decentralized(cfg: Config, n: int) -> str | None:
    return None if cfg.model.latent_layout == "decentralized" else "model.latent_layout is 'shared'"


def _conditioned(cfg: Config, n: int) -> str | None:
    return "model.decoder_conditioning is 'none'" if cfg.model.decoder_conditioning == "none" else None


def _gumbel(cfg: Config, n: int) -> str | None:
    return None if cfg.model.use_gumbel_softmax else "model.use_gumbel_softmax is false"


def _cluster_init(cfg: Config, n: int) -> str | None:
    return "model.cluster_init is 'none'" if cfg.model.cluster_init == "none" else None


learned_pi = first_reason(mixture_prior, _learnable_pi)
decentralized_latents = first_reason(component_decoding, _decentralized)
component_embeddings = first_reason(component_decoding, _conditioned)
gumbel_routing = first_reason(component_decoding, _gumbel)
warm_start_clustering = first_reason(mixture_prior, _cluster_init)


# --- networks, classifiers, curriculum -----------------------------------------------------------

def conv_network(cfg: Config, n: int) -> str | None:
    if "conv" in (cfg.model.encoder_type, cfg.model.decoder_type):
        return None
    return "model.encoder_type and model.decoder_type are 'dense'"


def heteroscedastic(cfg: Config, n: int) -> str | None:
    return None if cfg.model.use_heteroscedastic_decoder else "model.use_heteroscedastic_decoder is false"


def tau_classifier(cfg: Config, n: int) -> str | None:
    return None if cfg.model.use_tau_classifier else "model.use_tau_classifier is false"


def labels(cfg: Config, n: int) -> str | None:
    """There are labeled training images."""
    return "data.num_labeled is 0" if n == 0 else None


def _label_weight(cfg: Config, n: int) -> str | None:
    return "model.label_weight is 0" if cfg.model.label_weight == 0 else None


def _no_tau(cfg: Config, n: int) -> str | None:
    if cfg.model.use_tau_classifier:
        return "model.use_tau_classifier is true: labels are predicted by τ"
    return None


classifier_loss = first_reason(labels, _label_weight)
# The classifier head exists only with labeled images, label_weight > 0 and τ off (ModelConfig.head_trained).
classifier_head = first_reason(_no_tau, labels, _label_weight)


def curriculum(cfg: Config, n: int) -> str | None:
    return None if cfg.curriculum.enabled else "curriculum.enabled is false"


def _kick(cfg: Config, n: int) -> str | None:
    return None if cfg.curriculum.kick.enabled else "curriculum.kick.enabled is false"


kick = first_reason(curriculum, _kick)


# --- loss terms --------------------------------------------------------------------------------

def _weight(name: str) -> Condition:
    """The term of ``model.<name>`` is off when that weight is 0."""
    def condition(cfg: Config, n: int) -> str | None:
        return f"model.{name} is 0" if getattr(cfg.model, name) == 0 else None
    return condition


def _regularizer(*kinds: str) -> Condition:
    def condition(cfg: Config, n: int) -> str | None:
        r = cfg.model.c_regularizer
        return None if r in kinds else f"model.c_regularizer is '{r}'"
    return condition


def dirichlet(cfg: Config, n: int) -> str | None:
    return "model.dirichlet_alpha is null" if cfg.model.dirichlet_alpha is None else None


latent_kl = _weight("kl_weight")
categorical_regularizer = first_reason(component_decoding, _regularizer("categorical", "both"))
logit_mog_regularizer = first_reason(component_decoding, _regularizer("logit_mog", "both"))
kl_c_term = first_reason(categorical_regularizer, _weight("kl_c_weight"))
logit_mog_term = first_reason(logit_mog_regularizer, _weight("c_logit_prior_weight"))
diversity_term = first_reason(mixture_prior, _weight("component_diversity_weight"))
usage_balance_term = first_reason(mixture_prior, _weight("usage_balance_weight"))
neighbour_term = first_reason(mixture_prior, _weight("neighbour_weight"))
l1_term = _weight("l1_weight")


def any_component_regularizer(cfg: Config, n: int) -> str | None:
    if kl_c_term(cfg, n) and logit_mog_term(cfg, n):
        return "no component regulariser is enabled"
    return None


# --- data --------------------------------------------------------------------------------------

def _file_dataset(cfg: Config, n: int) -> str | None:
    d = cfg.data.dataset
    return f"data.dataset is '{d}' (bundled)" if d in BUNDLED_DATASETS else None


def _downloadable(cfg: Config, n: int) -> str | None:
    d = cfg.data.dataset
    return None if d in DOWNLOADABLE_DATASETS else f"data.dataset is '{d}'"


def _pooled_test_split(cfg: Config, n: int) -> str | None:
    d = cfg.data
    official = d.test_source == "official" or (d.test_source == "auto" and d.dataset in DOWNLOADABLE_DATASETS)
    return "the test split is the official test set" if official else None


# --- config keys -------------------------------------------------------------------------------

# Every schema key applies unless listed here or under the curriculum (below).
_CONFIG_KEYS: dict[str, Condition] = {
    "data.path": _file_dataset,
    "data.cache_dir": _downloadable,
    "data.download": _downloadable,
    "data.test_fraction": _pooled_test_split,
    "data.balanced_labels": labels,
    "model.num_components": mixture_prior,
    "model.component_embedding_dim": component_embeddings,
    "model.learnable_pi": component_decoding,
    "model.conv_channels": conv_network,
    "model.use_straight_through_gumbel": gumbel_routing,
    "model.gumbel_temperature": gumbel_routing,
    "model.gumbel_temperature_min": gumbel_routing,
    "model.gumbel_temperature_anneal_epochs": gumbel_routing,
    "model.top_m_gating": component_decoding,
    "model.sigma_granularity": heteroscedastic,
    "model.sigma_min": heteroscedastic,
    "model.sigma_max": heteroscedastic,
    "model.c_regularizer": component_decoding,
    "model.kl_warmup_epochs": latent_kl,
    "model.kl_c_weight": categorical_regularizer,
    "model.kl_c_anneal_epochs": component_decoding,
    "model.c_logit_prior_weight": logit_mog_regularizer,
    "model.c_logit_prior_mean": logit_mog_regularizer,
    "model.c_logit_prior_sigma": logit_mog_regularizer,
    "model.dirichlet_weight": dirichlet,
    "model.component_diversity_weight": mixture_prior,
    "model.latent_kl_weighting": decentralized_latents,
    "model.usage_balance_weight": mixture_prior,
    "model.neighbour_weight": mixture_prior,
    "model.neighbour_count": neighbour_term,
    "model.cluster_init": mixture_prior,
    "model.cluster_init_epochs": warm_start_clustering,
    "model.cluster_init_weight": warm_start_clustering,
    "model.label_weight": labels,
    "model.dropout_rate": classifier_head,
    "model.tau_smoothing_alpha": tau_classifier,
    "model.tau_count_decay": tau_classifier,
    "model.tau_free_count_threshold": tau_classifier,
    "model.vamp_num_samples_kl": prior_is("vamp"),
    "model.vamp_pseudo_init_method": prior_is("vamp"),
    "model.vamp_pseudo_lr_scale": prior_is("vamp"),
    "model.geometric_arrangement": prior_is("geometric_mog"),
    "model.geometric_radius": prior_is("geometric_mog"),
}


def _curriculum_key(key: str) -> Condition:
    """Curriculum settings need the curriculum; kick settings need the kick as well."""
    if key == "curriculum.enabled":
        return always
    if key.startswith("curriculum.kick.") and key != "curriculum.kick.enabled":
        return kick
    return curriculum


APPLIES: dict[str, Condition] = {
    key: _curriculum_key(key) if key.startswith("curriculum.") else _CONFIG_KEYS.get(key, always)
    for key in schema_keys()
}
