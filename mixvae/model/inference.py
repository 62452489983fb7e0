"""Per-image predictions in evaluation mode: what the logged model serves.

``predict_arrays`` is a pure function of arrays once the model is merged, so it runs inside jax.jit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mixvae.model import tau as tau_lib
from mixvae.model.losses import expected_nll
from mixvae.model.routing import RouteCtx

# Evaluation mode draws no noise; the key only fixes the VampPrior KL samples, which predict ignores.
_PREDICT_KEY_SEED = 0


def predict_arrays(model, x: jax.Array, active_mask: jax.Array, tau_counts: jax.Array | None, cfg, *,
                   temperature: jax.Array | float | None = None) -> dict[str, jax.Array]:
    """Evaluation-mode outputs per image (z = z_mean, no Gumbel noise, no dropout, no kick bias).

    → 'component' (argmax_k r) and 'responsibilities' [N, K] for mixture-based priors;
    'predicted_label' and 'certainty' with τ or the classifier head; 'ood_score' with τ;
    'reconstruction_error' always: Σ_k w_k ℓ_k under evaluation routing, without recon_weight.
    ``temperature`` is the soft-Gumbel routing temperature (only used with Gumbel routing without
    straight-through); it defaults to model.gumbel_temperature.
    """
    spec = model.spec
    m = cfg.model
    ctx = RouteCtx(
        active_mask=jnp.asarray(active_mask, jnp.float32),
        kick_bias=jnp.zeros((spec.num_components,), jnp.float32),
        temperature=jnp.asarray(m.gumbel_temperature if temperature is None else temperature, jnp.float32),
        straight_through=jnp.asarray(1.0 if m.use_straight_through_gumbel else 0.0, jnp.float32),
    )
    fwd = model(x, ctx, train=False, key=jax.random.PRNGKey(_PREDICT_KEY_SEED))
    result: dict[str, jax.Array] = {}
    if spec.is_mixture_based:
        result["component"] = jnp.argmax(fwd.responsibilities, axis=-1).astype(jnp.int32)
        result["responsibilities"] = fwd.responsibilities
    if spec.classifier == "tau":
        if tau_counts is None:
            raise ValueError("predict_arrays: model.use_tau_classifier is true but tau_counts is None")
        tau = tau_lib.tau_map(tau_counts)
        label, certainty, _ = tau_lib.predict(fwd.responsibilities, tau)
        result["predicted_label"] = label
        result["certainty"] = certainty
        result["ood_score"] = tau_lib.ood_score(fwd.responsibilities, tau)
    elif fwd.class_logits is not None:
        probs = jax.nn.softmax(fwd.class_logits, axis=-1)
        result["predicted_label"] = jnp.argmax(fwd.class_logits, axis=-1).astype(jnp.int32)
        result["certainty"] = jnp.max(probs, axis=-1)
    result["reconstruction_error"] = expected_nll(spec.likelihood, fwd, x)
    return result
