"""mixvae: responsibility-conditioned mixture VAEs in JAX/Flax NNX, tracked in MLflow."""

__version__ = "0.1.0"
