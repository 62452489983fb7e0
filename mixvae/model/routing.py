"""Responsibilities, routing weights and top-M gating.

r = softmax(ỹ): deterministic responsibilities, used by every regulariser and metric.
s: routing weights that combine the decoded components — r, or a Gumbel-softmax sample in training.
ỹ_k = y_k + b_k on active components and −∞ on inactive ones, so r_k = s_k = 0 exactly there.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

_F32 = jnp.float32


@struct.dataclass
class RouteCtx:
    """Everything about routing that changes during training without recompiling.

    ``kick_bias`` and ``straight_through`` act in training steps only: evaluation
    uses no kick bias and the configured straight-through flag.
    """

    active_mask: jax.Array       # [K] float32 0/1
    kick_bias: jax.Array         # [K] float32, zeros except during a curriculum kick
    temperature: jax.Array       # [] float32 Gumbel temperature T
    straight_through: jax.Array  # [] float32, 1.0 = straight-through on

    @staticmethod
    def default(cfg) -> "RouteCtx":
        """All components active, no bias, T₀, straight-through as configured."""
        k = cfg.model.num_components
        return RouteCtx.evaluation(cfg, jnp.ones((k,), _F32), cfg.model.gumbel_temperature)

    @staticmethod
    def evaluation(cfg, active_mask: jax.Array, temperature: jax.Array | float) -> "RouteCtx":
        """Evaluation routing: the given active components and temperature, no kick bias, and
        straight-through as configured."""
        m = cfg.model
        return RouteCtx(
            active_mask=jnp.asarray(active_mask, _F32),
            kick_bias=jnp.zeros((m.num_components,), _F32),
            temperature=jnp.asarray(temperature, _F32),
            straight_through=jnp.asarray(1.0 if m.use_straight_through_gumbel else 0.0, _F32),
        )


@struct.dataclass
class Routing:
    responsibilities: jax.Array        # r [B, K]
    routing: jax.Array                 # s [B, K]
    soft_sample: jax.Array | None      # ŝ [B, K], training with Gumbel only
    ranking: jax.Array                 # [B, K] soft probabilities that order the components for top-M


def is_active(active_mask: jax.Array) -> jax.Array:
    return active_mask > 0.5


def mask_logits(logits: jax.Array, active_mask: jax.Array, kick_bias: jax.Array | None = None) -> jax.Array:
    """ỹ_k = y_k + b_k for active k, −∞ otherwise.

    jnp.where sends a zero cotangent to the −∞ branch, so inactive logits get exactly zero gradient.
    """
    shifted = logits if kick_bias is None else logits + kick_bias
    return jnp.where(is_active(active_mask), shifted, -jnp.inf)


def masked_softmax(masked_logits: jax.Array, active_mask: jax.Array) -> jax.Array:
    """softmax over the active components; exactly 0 on inactive ones (at least one must be active)."""
    probs = jax.nn.softmax(masked_logits, axis=-1)
    return jnp.where(is_active(active_mask), probs, 0.0)


def masked_log_softmax(masked_logits: jax.Array, active_mask: jax.Array) -> jax.Array:
    """log softmax over the active components; 0 (not −∞) on inactive ones so that products stay finite."""
    active = is_active(active_mask)
    safe = jnp.where(active, masked_logits, 0.0)
    # Double where: inactive inputs are replaced before the reduction and the outputs after it.
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(active, safe, -jnp.inf), axis=-1, keepdims=True))
    exp = jnp.where(active, jnp.exp(safe - shift), 0.0)
    log_norm = jnp.log(jnp.sum(exp, axis=-1, keepdims=True)) + shift
    return jnp.where(active, safe - log_norm, 0.0)


def gumbel_softmax_sample(masked_logits: jax.Array, active_mask: jax.Array, temperature: jax.Array,
                          key: jax.Array) -> jax.Array:
    """ŝ = softmax((ỹ + g) / T) over the active components, g ~ Gumbel(0, 1) drawn with ``key``."""
    g = jax.random.gumbel(key, masked_logits.shape, _F32)
    return masked_softmax((masked_logits + g) / temperature, active_mask)


def straight_through(soft: jax.Array) -> jax.Array:
    """onehot(argmax ŝ) + ŝ − stop_gradient(ŝ): one-hot forward value, the gradient of ŝ."""
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
    return hard + soft - jax.lax.stop_gradient(soft)


def route(logits: jax.Array, ctx: RouteCtx, *, train: bool, key: jax.Array, use_gumbel: bool,
          use_straight_through: bool) -> Routing:
    """Responsibilities r and routing weights s for logits y [B, K]."""
    mask = ctx.active_mask
    if not train:
        masked = mask_logits(logits, mask)  # no kick bias in evaluation
        r = masked_softmax(masked, mask)
        if not use_gumbel:
            s = r
        elif use_straight_through:
            s = jax.nn.one_hot(jnp.argmax(r, axis=-1), r.shape[-1], dtype=r.dtype)
        else:
            s = masked_softmax(masked / ctx.temperature, mask)
        return Routing(responsibilities=r, routing=s, soft_sample=None, ranking=r)

    masked = mask_logits(logits, mask, ctx.kick_bias)
    r = masked_softmax(masked, mask)
    if not use_gumbel:
        return Routing(responsibilities=r, routing=r, soft_sample=None, ranking=r)
    soft = gumbel_softmax_sample(masked, mask, ctx.temperature, key)  # ŝ
    if use_straight_through:
        s = jnp.where(ctx.straight_through > 0.5, straight_through(soft), soft)
    else:
        s = soft
    return Routing(responsibilities=r, routing=s, soft_sample=soft, ranking=soft)


def select_decoded(ranking: jax.Array, routing: jax.Array, active_mask: jax.Array,
                   top_m: int) -> tuple[jax.Array, jax.Array]:
    """Decoded components S(b) and their weights w → (index [B, M] int32, weight [B, M]).

    0 < M < K: the M components with the largest soft probabilities (ties to the lower index, inactive
    components last), weights renormalised over the set, w = s_S / Σ_S s. Otherwise all K components
    are decoded with w = s; M = K takes this same path, so it is bit-identical to M = 0.
    """
    batch, k = routing.shape
    if 0 < top_m < k:
        # Inactive components get −1 (probabilities are ≥ 0), so they rank after every active one.
        order = jnp.where(is_active(active_mask), ranking, -1.0)
        _, index = jax.lax.top_k(order, top_m)  # lax.top_k puts the lower index first among ties
        picked = jnp.take_along_axis(routing, index, axis=-1)
        total = jnp.sum(picked, axis=-1, keepdims=True)
        weight = picked / jnp.maximum(total, jnp.finfo(_F32).tiny)
        return index.astype(jnp.int32), weight
    index = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (batch, k))
    return index, routing
