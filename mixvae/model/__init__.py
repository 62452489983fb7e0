"""The mixvae model: networks, priors, routing, losses and the τ classifier."""

from mixvae.model import tau
from mixvae.model.inference import predict_arrays
from mixvae.model.losses import Terms, compute_terms, enabled_terms, expected_nll
from mixvae.model.mixvae import Forward, MixVAE, ModelSpec, blended_sigma
from mixvae.model.priors import geometric_centres, init_pseudo_inputs
from mixvae.model.routing import RouteCtx
from mixvae.model.weights import load_weights, save_weights

__all__ = [
    "Forward", "MixVAE", "ModelSpec", "RouteCtx", "Terms", "blended_sigma", "compute_terms", "enabled_terms",
    "expected_nll", "geometric_centres", "init_pseudo_inputs", "load_weights", "predict_arrays",
    "save_weights", "tau",
]
