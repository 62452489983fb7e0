"""τ classifier: soft component-to-label counts and the predictions made from them.

N ∈ ℝ^{K×C} soft counts, initialised to α₀; τ_{k,c} = N_{k,c} / Σ_c' N_{k,c'}; p(c|x) = Σ_k r_k(x) τ_{k,c}.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def init_counts(num_components: int, num_classes: int, alpha0: float) -> jax.Array:
    """N = α₀ everywhere."""
    return jnp.full((num_components, num_classes), alpha0, jnp.float32)


def tau_map(counts: jax.Array) -> jax.Array:
    """τ_{k,c} = N_{k,c} / Σ_c' N_{k,c'}: each row is a distribution over labels."""
    return counts / jnp.sum(counts, axis=-1, keepdims=True)


def labeled_mask(labels: jax.Array, valid: jax.Array) -> jax.Array:
    """1.0 for valid images with a label (label ≥ 0), else 0.0."""
    return jnp.where((labels >= 0) & (valid > 0.5), 1.0, 0.0).astype(jnp.float32)


def update_counts(counts: jax.Array, responsibilities: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """N ← N + stop_gradient(Σ_{b labeled, valid} r_b ⊗ onehot(y_b)).

    Unlabeled (−1) and padded images add nothing; inactive components have r = 0 and gain nothing.
    """
    num_classes = counts.shape[-1]
    weight = labeled_mask(labels, valid)
    onehot = jax.nn.one_hot(jnp.where(labels >= 0, labels, 0), num_classes, dtype=counts.dtype) * weight[:, None]
    evidence = jnp.einsum("bk,bc->kc", responsibilities, onehot)
    return counts + jax.lax.stop_gradient(evidence)


def decay_counts(counts: jax.Array, alpha0: float, delta: float) -> jax.Array:
    """N ← α₀ + δ (N − α₀), applied at the start of each epoch."""
    return alpha0 + delta * (counts - alpha0)


def predict(responsibilities: jax.Array, tau: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """p(c|x) = Σ_k r_k τ_{k,c} → (predicted label argmax_c p [B] int32, certainty max_c p [B], p [B, C])."""
    p = responsibilities @ tau
    return jnp.argmax(p, axis=-1).astype(jnp.int32), jnp.max(p, axis=-1), p


def ood_score(responsibilities: jax.Array, tau: jax.Array) -> jax.Array:
    """1 − max_k (r_k · max_c τ_{k,c}) ∈ [0, 1].

    High when no component both claims x and carries a clear label.
    """
    return 1.0 - jnp.max(responsibilities * jnp.max(tau, axis=-1), axis=-1)


def cross_entropy(responsibilities: jax.Array, tau: jax.Array, labels: jax.Array) -> jax.Array:
    """CE_b = −log(Σ_k r_{b,k} τ_{k,y_b} + 1e−8), τ under stop-gradient; any value where y_b = −1."""
    tau = jax.lax.stop_gradient(tau)
    safe_labels = jnp.where(labels >= 0, labels, 0)
    p_true = jnp.sum(responsibilities * tau[:, safe_labels].T, axis=-1)
    return -jnp.log(p_true + 1e-8)


def free_components(counts: jax.Array, alpha0: float, threshold: float, active_mask: jax.Array) -> jax.Array:
    """bool [K]: active components whose labeled evidence n_k = Σ_c (N_{k,c} − α₀) is below the threshold."""
    evidence = jnp.sum(counts - alpha0, axis=-1)
    return (evidence < threshold) & (active_mask > 0.5)
