"""Entropy H(p) = −Σ p log p, the one definition used by the losses, the compiled steps and the metrics.

The same function serves device arrays (jax.numpy, inside compiled code, differentiable) and host
NumPy arrays (the split metrics, in float64): it computes with the array library of its input, so the
host keeps its float64 precision. ``jax.scipy.special.entr`` is not used because its gradient at
p = 0 is infinite, and the regularisers differentiate through empty components.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def _array_library(p):
    return np if isinstance(p, (np.ndarray, np.generic)) else jnp


def xlogx(p):
    """p log p with 0 log 0 = 0 and a zero (not NaN) gradient at p = 0.

    The inner ``where`` keeps log away from 0, the outer one sets the value (double where).
    """
    xp = _array_library(p)
    positive = p > 0
    return xp.where(positive, p * xp.log(xp.where(positive, p, 1.0)), 0.0)


def entropy(p, axis: int = -1):
    """H(p) = −Σ p log p in nats along ``axis``, with 0 log 0 = 0."""
    return -_array_library(p).sum(xlogx(p), axis=axis)
