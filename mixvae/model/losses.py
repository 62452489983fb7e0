"""Likelihoods and the named loss terms of the objective.

Each term is one function here; ``compute_terms`` applies the configured weights (never the schedule
factors) and returns per-image, per-labeled-image and per-step values. The trainer takes
masked means over the valid images and adds the schedule factors to form the objective.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from mixvae.config.metric_table import KEYS
from mixvae.model import tau as tau_lib
from mixvae.model.entropy import entropy, xlogx
from mixvae.model.routing import is_active, masked_log_softmax

_LOG_2PI = math.log(2.0 * math.pi)
_PIXEL_AXES = (-3, -2, -1)

# The objective's named terms, grouped by how a batch reduces them (the fields of ``Terms``): a mean over
# the valid images, a mean over the labeled images, or one value per batch.
IMAGE_TERMS = ("loss.recon", "loss.kl_z", "loss.kl_c", "loss.kl_c_logit_mog")
LABELED_TERMS = ("loss.classifier",)
STEP_TERMS = ("loss.dirichlet", "loss.diversity", "loss.usage_balance", "loss.cluster_init", "loss.neighbour",
              "loss.l1")
# Terms that guide training from the training set alone (a clustering of it, its neighbour graph): they
# have no value on validation or test images and are not part of loss.total.
TRAINING_AIDS = ("loss.cluster_init", "loss.neighbour")
LOSS_TERMS = IMAGE_TERMS + LABELED_TERMS + STEP_TERMS


# --- per-image negative log-likelihoods ℓ -----------------------------------------------

def pixels(a: jax.Array) -> jax.Array:
    """Images [..., H, W, Ch] as rows of pixels [..., H·W·Ch]."""
    return a.reshape(*a.shape[:-3], math.prod(a.shape[-3:]))


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
    """ℓ = Σ_p [softplus(o_p) − x_p o_p]: the Bernoulli NLL on logits o, summed over the pixels.

    Summed over one flat axis of H·W·Ch pixels rather than over (H, W, Ch) with Ch = 1: the same
    sum, which XLA:CPU fuses with the output head's gradient far better (bench/operators.py)."""
    logits, x = pixels(logits), pixels(x)
    return jnp.sum(jax.nn.softplus(logits) - x * logits, axis=-1)


def squared_error(mean: jax.Array, x: jax.Array) -> jax.Array:
    """ℓ = Σ_p (x_p − μ_p)²."""
    return jnp.sum(jnp.square(x - mean), axis=_PIXEL_AXES)


def gaussian_nll_pixel(mean: jax.Array, sigma: jax.Array, x: jax.Array) -> jax.Array:
    """ℓ = Σ_p [(x_p − μ_p)² / (2σ_p²) + log σ_p] + (P/2) log 2π, one σ per pixel."""
    # Written as ½((x − μ)/σ)² (one division) and summed over one axis of pixels rather than over
    # (H, W, Ch) with Ch = 1: the same value, which XLA:CPU fuses with the σ head's matmul and its
    # gradient far better (bench/operators.py: the per-pixel likelihood). Squared error and the
    # per-image σ measured slower over a flat axis, so they keep the (H, W, Ch) sum.
    mean, sigma, x = pixels(mean), pixels(sigma), pixels(x)
    per_pixel = 0.5 * jnp.square((x - mean) / sigma) + jnp.log(sigma)
    return jnp.sum(per_pixel, axis=-1) + 0.5 * mean.shape[-1] * _LOG_2PI


def gaussian_nll_image(mean: jax.Array, sigma: jax.Array, x: jax.Array) -> jax.Array:
    """ℓ = Σ_p (x_p − μ_p)² / (2σ²) + P log σ + (P/2) log 2π, one σ per image.

    ``sigma`` has the leading (batch) shape of ``mean`` without the pixel axes.
    """
    return gaussian_nll_from_squared_error(squared_error(mean, x), sigma, math.prod(mean.shape[-3:]))


def gaussian_nll_from_squared_error(sq_error: jax.Array, sigma: jax.Array, num_pixels: int) -> jax.Array:
    """ℓ = SE / (2σ²) + P log σ + (P/2) log 2π from the squared error SE = Σ_p (x_p − μ_p)², one σ per image."""
    return sq_error / (2.0 * jnp.square(sigma)) + num_pixels * jnp.log(sigma) + 0.5 * num_pixels * _LOG_2PI


@struct.dataclass
class LinearHead:
    """A dense mean head and its inputs: the mean images are μ_m = h′_m W + b, never formed.

    The forward pass keeps it, instead of relying on the means, where that needs fewer
    multiplications (``ModelSpec.expansion_pays``)."""
    features: jax.Array   # h′ [B, M, F], the conditioned feature vectors of the B·M decodes
    kernel: jax.Array     # W [F, P]
    bias: jax.Array       # b [P]


def squared_error_from_head(head: LinearHead, x: jax.Array) -> jax.Array:
    """Σ_p (x_p − μ_p)² of each decode's mean μ = h′W + b, without forming μ:

        ‖x − b − h′W‖² = ‖x − b‖² − 2 h′·(W(x − b)) + h′ᵀ (W Wᵀ) h′

    The same value (to float rounding). The Gram matrix W Wᵀ [F, F] and W(x − b) are computed once per
    batch, so each of the B·M decodes costs F² multiplications instead of the F·P of its mean image
    (and none of the elementwise work over its P pixels). With x = 0 it is Σ_p μ_p².

    images x [B, H, W, Ch] with P pixels → [B, M].
    """
    centred = pixels(x) - head.bias                              # x − b            [B, P]
    projected = centred @ head.kernel.T                          # W(x − b)         [B, F]
    cross = jnp.einsum("bmf,bf->bm", head.features, projected)
    quadratic = gram_quadratic_form(head.features, head.kernel)
    return jnp.sum(jnp.square(centred), axis=-1)[:, None] - 2.0 * cross + quadratic


@jax.custom_vjp
def gram_quadratic_form(h: jax.Array, kernel: jax.Array) -> jax.Array:
    """h′ᵀ (W Wᵀ) h′ = ‖h′W‖² for each row h′ [..., F] of the decodes, W [F, P] → [...].

    Written with its own gradient: with G = W Wᵀ symmetric, ∂/∂h′ = 2 g·Gh′ reuses the forward pass's
    Gh′, and ∂/∂W = 2 (Σ g h′h′ᵀ) W is one matmul in the natural layout. Automatic differentiation,
    which cannot know that G is symmetric, spends one [B·M, F] × [F, F] matmul and a transposed
    [F, F] × [F, P] one more (measured in bench/operators.py)."""
    return jnp.sum((h @ (kernel @ kernel.T)) * h, axis=-1)


def _gram_quadratic_forward(h, kernel):
    hg = h @ (kernel @ kernel.T)
    return jnp.sum(hg * h, axis=-1), (h, hg, kernel)


def _gram_quadratic_backward(saved, g):
    h, hg, kernel = saved
    outer = jnp.einsum("...f,...g->fg", g[..., None] * h, h)   # Σ g h′h′ᵀ  [F, F], symmetric
    return 2.0 * g[..., None] * hg, 2.0 * (outer @ kernel)


gram_quadratic_form.defvjp(_gram_quadratic_forward, _gram_quadratic_backward)


def image_nll(likelihood: str, out: jax.Array, sigma: jax.Array | None, x: jax.Array) -> jax.Array:
    """ℓ for outputs [..., H, W, Ch] against images x broadcast to them → the leading shape."""
    if likelihood == "bce":
        return bernoulli_nll(out, x)
    if likelihood == "mse":
        return squared_error(out, x)
    if sigma.ndim == out.ndim:
        return gaussian_nll_pixel(out, sigma, x)
    return gaussian_nll_image(out, sigma, x)


def expected_nll(likelihood: str, fwd, x: jax.Array) -> jax.Array:
    """Per image: Σ_{k∈S} w_k ℓ(x; out_k) for component-decoding priors, ℓ(x; out) otherwise → [B].

    This is ``loss.recon`` without ``recon_weight`` and the served ``reconstruction_error``. Where the
    forward pass kept the dense head (``fwd.head``), the squared errors come from the head's inputs
    (``squared_error_from_head``) instead of the mean images.
    """
    if fwd.decoded_weight is None:
        return image_nll(likelihood, fwd.out, fwd.sigma, x)
    if fwd.head is None:
        per_component = image_nll(likelihood, fwd.out, fwd.sigma, x[:, None])  # [B, M]
    else:
        sq_error = squared_error_from_head(fwd.head, x)
        per_component = sq_error if likelihood == "mse" else gaussian_nll_from_squared_error(
            sq_error, fwd.sigma, math.prod(x.shape[-3:]))
    return jnp.sum(fwd.decoded_weight * per_component, axis=-1)


# --- component regularisers ------------------------------------------------------

def log_pi_active(pi_logits: jax.Array, active_mask: jax.Array) -> jax.Array:
    """log π^A_k = log(π_k / Σ_{j∈A} π_j) for k ∈ A; 0 (not −∞) on inactive components."""
    return masked_log_softmax(jnp.where(is_active(active_mask), pi_logits, -jnp.inf), active_mask)


def categorical_kl(responsibilities: jax.Array, pi_logits: jax.Array, active_mask: jax.Array) -> jax.Array:
    """KL(r ‖ π^A) = Σ_{k∈A} r_k (log r_k − log π^A_k) per image → [B]; inactive components have r_k = 0."""
    log_pi = log_pi_active(pi_logits, active_mask)
    cross = jnp.where(is_active(active_mask), responsibilities * log_pi, 0.0)
    return jnp.sum(xlogx(responsibilities) - cross, axis=-1)


def logit_mog_neg_log_prior(logits: jax.Array, active_mask: jax.Array, mode_offset: float,
                            sigma: float) -> jax.Array:
    """−log p_A(y) for raw logits y [B, K] → [B].

    log p_A(y) = logsumexp_{k∈A} [−(K/2) log(2πσ²) − ‖y − M·1_k‖² / (2σ²)] − log |A|.
    """
    k = logits.shape[-1]
    active = is_active(active_mask)
    # ‖y − M·1_k‖² = ‖y‖² − 2M y_k + M²
    sq_dist = jnp.sum(jnp.square(logits), axis=-1, keepdims=True) - 2.0 * mode_offset * logits + mode_offset ** 2
    log_components = -0.5 * k * jnp.log(2.0 * math.pi * sigma ** 2) - sq_dist / (2.0 * sigma ** 2)
    log_sum = jax.nn.logsumexp(jnp.where(active, log_components, -jnp.inf), axis=-1)
    return -(log_sum - jnp.log(jnp.sum(active.astype(logits.dtype))))


def dirichlet_neg_log_prior(pi_logits: jax.Array, active_mask: jax.Array, alpha: float) -> jax.Array:
    """−(α − 1) Σ_{k∈A} log π^A_k, once per step → []."""
    return -(alpha - 1.0) * jnp.sum(log_pi_active(pi_logits, active_mask))


def batch_usage(responsibilities: jax.Array, valid: jax.Array) -> jax.Array:
    """p̂_k = 𝔼_b r_{b,k} over the valid images of the batch → [K]."""
    weight = valid.astype(responsibilities.dtype)
    return jnp.sum(weight[:, None] * responsibilities, axis=0) / jnp.maximum(jnp.sum(weight), 1.0)


def usage_entropy(responsibilities: jax.Array, valid: jax.Array) -> jax.Array:
    """H(p̂) of the batch usage p̂ → []."""
    return entropy(batch_usage(responsibilities, valid))


def usage_balance(responsibilities: jax.Array, valid: jax.Array, pi_logits: jax.Array,
                  active_mask: jax.Array) -> jax.Array:
    """KL(p̂ ‖ π^A) with p̂_k = 𝔼_b r_{b,k} over the valid images of the batch → [].

    Zero when the batch uses the components as often as the prior expects; it grows as usage piles
    onto few components, which the per-image terms of the ELBO do not penalise.
    """
    return categorical_kl(batch_usage(responsibilities, valid)[None], pi_logits, active_mask)[0]


def cluster_cross_entropy(responsibilities: jax.Array, target: jax.Array, active_mask: jax.Array) -> jax.Array:
    """−log r_{b, a_b} for the warm-start cluster a_b of each image → [B] (r clipped away from 0)."""
    r = jnp.where(is_active(active_mask), responsibilities, 0.0)
    picked = jnp.take_along_axis(r, target[:, None], axis=-1)[:, 0]
    return -jnp.log(jnp.maximum(picked, 1e-8))


def neighbour_disagreement(responsibilities: jax.Array, neighbour_responsibilities: jax.Array) -> jax.Array:
    """−log Σ_k r_k(x) r_k(x′) for each image x and its neighbour x′ → [B] (the sum clipped away from 0).

    Small when both images put their mass on the same component; the gradient flows through both.
    """
    agreement = jnp.sum(responsibilities * neighbour_responsibilities, axis=-1)
    return -jnp.log(jnp.maximum(agreement, 1e-8))


def head_cross_entropy(class_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """CE_b = −log softmax(class_logits_b)_{y_b} → [B]; any value where y_b = −1."""
    safe_labels = jnp.where(labels >= 0, labels, 0)
    log_probs = jax.nn.log_softmax(class_logits, axis=-1)
    return -jnp.take_along_axis(log_probs, safe_labels[:, None], axis=-1)[:, 0]


def l1_norm_of_kernels(model: nnx.Module) -> jax.Array:
    """Σ |θ| over every Dense/Conv ``kernel`` (the weight-decayed parameters) → []."""
    total = jnp.zeros((), jnp.float32)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path and path[-1] == "kernel":
            total = total + jnp.sum(jnp.abs(variable[...]))
    return total


def _pi_logits_or_uniform(model, fwd) -> jax.Array:
    """π logits of a component-decoding prior; uniform (zeros) for the VampPrior."""
    pi_logits = model.pi_logits_value()
    return jnp.zeros(fwd.responsibilities.shape[-1], jnp.float32) if pi_logits is None else pi_logits


# --- the terms ---------------------------------------------------------------------------------------

@struct.dataclass
class Terms:
    image: dict      # IMAGE_TERMS: per-image [B] values of the enabled terms, weights applied
    labeled: dict    # LABELED_TERMS: [B], 0 where unlabeled or not valid (when enabled)
    step: dict       # STEP_TERMS: one scalar per batch (when enabled)


def enabled_terms(cfg, num_labeled: int) -> dict[str, str | None]:
    """Every term of the objective → None when enabled, else the reason it is disabled.

    When a term applies is decided once, by its metric key's condition in ``mixvae.config.metric_table``.
    """
    return {name: KEYS[name].applies(cfg, num_labeled) for name in LOSS_TERMS}


def _label_cross_entropy(spec, fwd, labels: jax.Array, tau_counts: jax.Array | None) -> jax.Array:
    """CE_b of the label predictor, through τ or through the classifier head → [B]."""
    if spec.classifier == "tau":
        if tau_counts is None:
            raise ValueError("compute_terms: model.use_tau_classifier is true but tau_counts is None; "
                             "pass the τ soft counts [K, C]")
        return tau_lib.cross_entropy(fwd.responsibilities, tau_lib.tau_map(tau_counts), labels)
    if fwd.class_logits is not None:
        return head_cross_entropy(fwd.class_logits, labels)
    raise ValueError("compute_terms: loss.classifier is enabled but the model has no classifier head; "
                     "it was built with data.num_labeled = 0 or label_weight = 0")


def compute_terms(cfg, model, fwd, x: jax.Array, labels: jax.Array, valid: jax.Array,
                  tau_counts: jax.Array | None) -> Terms:
    """The enabled loss terms (docs/model.md) with their configured weights and no schedule factors.

    x [B, H, W, Ch]; labels int32 [B] with −1 = unlabeled; valid float32 [B] 0/1 (padded slots 0);
    tau_counts [K, C] soft counts, or None when τ is off.
    """
    m = cfg.model
    spec = model.spec
    enabled = {name for name, reason in enabled_terms(cfg, cfg.data.num_labeled).items() if reason is None}

    image = {"loss.recon": m.recon_weight * expected_nll(spec.likelihood, fwd, x)}
    if "loss.kl_z" in enabled:
        image["loss.kl_z"] = m.kl_weight * fwd.kl_z
    if "loss.kl_c" in enabled:
        image["loss.kl_c"] = m.kl_c_weight * categorical_kl(fwd.responsibilities, model.pi_logits_value(),
                                                            fwd.active_mask)
    if "loss.kl_c_logit_mog" in enabled:
        image["loss.kl_c_logit_mog"] = m.c_logit_prior_weight * logit_mog_neg_log_prior(
            fwd.logits, fwd.active_mask, m.c_logit_prior_mean, m.c_logit_prior_sigma)

    labeled = {}
    if "loss.classifier" in enabled:
        ce = _label_cross_entropy(spec, fwd, labels, tau_counts)
        is_labeled = tau_lib.labeled_mask(labels, valid) > 0.5
        labeled["loss.classifier"] = jnp.where(is_labeled, m.label_weight * ce, 0.0)

    step = {}
    if "loss.dirichlet" in enabled:
        pi_logits = model.pi_logits_value()
        if pi_logits is None:
            raise ValueError("compute_terms: model.dirichlet_alpha is set but this prior has no π")
        step["loss.dirichlet"] = m.dirichlet_weight * dirichlet_neg_log_prior(pi_logits, fwd.active_mask,
                                                                              m.dirichlet_alpha)
    if "loss.diversity" in enabled:
        step["loss.diversity"] = m.component_diversity_weight * usage_entropy(fwd.responsibilities, valid)
    if "loss.usage_balance" in enabled:
        step["loss.usage_balance"] = m.usage_balance_weight * usage_balance(
            fwd.responsibilities, valid, _pi_logits_or_uniform(model, fwd), fwd.active_mask)
    if "loss.l1" in enabled:
        step["loss.l1"] = m.l1_weight * l1_norm_of_kernels(model)
    return Terms(image=image, labeled=labeled, step=step)


# --- the objective -------------------------------------------------------------------------------------

@struct.dataclass
class Factors:
    """The schedule factors of one epoch; 1.0 leaves a configured weight as it is."""
    kl_z: jax.Array            # β(n): KL warm-up of the latent KL
    kl_c: jax.Array            # κ(n): annealing of the component regulariser (and a curriculum kick)
    cluster_init: jax.Array    # γ(n): the warm-start clustering's weight, decaying to 0


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def objective(cfg, model, fwd, x: jax.Array, labels: jax.Array, valid: jax.Array, tau_counts: jax.Array | None,
              factors: Factors, cluster_target: jax.Array | None = None,
              neighbour_responsibilities: jax.Array | None = None) -> tuple[jax.Array, Terms]:
    """What the optimiser minimises for one batch (docs/model.md, "The objective"):

        L =  𝔼_b [ recon_b + β·kl_z_b + κ·(kl_c_b + logit_mog_b) ]       over the valid images
           + 𝔼_{b labeled} [ classifier_b ]
           + usage_balance + dirichlet + diversity + l1                 once per batch
           + γ·𝔼_b [ −log r_{b, a_b} ]                                  warm-start clustering a
           + λ_nb·𝔼_b [ −log Σ_k r_{b,k} r′_{b,k} ]                      r′ = a nearest neighbour's r

    Every term carries its configured weight (``compute_terms``); β, κ and γ are the schedule factors.
    Returns (L, terms); the two training aids appear in ``terms.step`` (``loss.cluster_init`` with γ
    applied, ``loss.neighbour``).
    """
    terms = compute_terms(cfg, model, fwd, x, labels, valid, tau_counts)
    per_image = {k: _masked_mean(v, valid) for k, v in terms.image.items()}
    zero = jnp.zeros((), jnp.float32)
    loss = (per_image["loss.recon"]
            + factors.kl_z * per_image.get("loss.kl_z", zero)
            + factors.kl_c * (per_image.get("loss.kl_c", zero) + per_image.get("loss.kl_c_logit_mog", zero)))
    if terms.labeled:
        is_labeled = tau_lib.labeled_mask(labels, valid)
        loss = loss + jnp.sum(terms.labeled["loss.classifier"]) / jnp.maximum(jnp.sum(is_labeled), 1.0)
    loss = loss + sum(terms.step.values(), zero)
    if cluster_target is not None:
        warm = factors.cluster_init * cfg.model.cluster_init_weight * _masked_mean(
            cluster_cross_entropy(fwd.responsibilities, cluster_target, fwd.active_mask), valid)
        loss = loss + warm
        terms = terms.replace(step={**terms.step, "loss.cluster_init": warm})
    if neighbour_responsibilities is not None:
        agree = cfg.model.neighbour_weight * _masked_mean(
            neighbour_disagreement(fwd.responsibilities, neighbour_responsibilities), valid)
        loss = loss + agree
        terms = terms.replace(step={**terms.step, "loss.neighbour": agree})
    return loss, terms
