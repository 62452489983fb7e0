"""Per-image predictions in evaluation mode: what the logged model serves.

``predict_arrays`` is a pure function of arrays once the model is merged, so it runs inside jax.jit.
``label_predictions`` is also what the training run's evaluation step reports as predicted labels.
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
    ctx = RouteCtx.evaluation(cfg, active_mask, cfg.model.gumbel_temperature if temperature is None else temperature)
    fwd = model(x, ctx, train=False, key=jax.random.PRNGKey(_PREDICT_KEY_SEED))
    result: dict[str, jax.Array] = {}
    if spec.is_mixture_based:
        result["component"] = jnp.argmax(fwd.responsibilities, axis=-1).astype(jnp.int32)
        result["responsibilities"] = fwd.responsibilities
    if spec.classifier == "tau" and tau_counts is None:
        raise ValueError("predict_arrays: model.use_tau_classifier is true but tau_counts is None")
    result.update(label_predictions(spec, fwd, tau_counts))
    result["reconstruction_error"] = expected_nll(spec.likelihood, fwd, x)
    return result


def label_predictions(spec, fwd, tau_counts: jax.Array | None) -> dict[str, jax.Array]:
    """Labels predicted in evaluation mode, per image.

    Through τ: 'predicted_label' argmax_c p(c|x), 'certainty' max_c p(c|x) and 'ood_score'. Through the
    classifier head: 'predicted_label' and 'certainty' (the largest softmax probability). Empty when
    the model predicts no labels.
    """
    if spec.classifier == "tau":
        tau = tau_lib.tau_map(tau_counts)
        label, certainty, _ = tau_lib.predict(fwd.responsibilities, tau)
        return {"predicted_label": label, "certainty": certainty,
                "ood_score": tau_lib.ood_score(fwd.responsibilities, tau)}
    if fwd.class_logits is not None:
        probs = jax.nn.softmax(fwd.class_logits, axis=-1)
        return {"predicted_label": jnp.argmax(fwd.class_logits, axis=-1).astype(jnp.int32),
                "certainty": jnp.max(probs, axis=-1)}
    return {}
