"""Latent priors: Gaussian KLs, geometric centres and the VampPrior.

KL(N(μ, diag e^ℓ) ‖ N(c, I)) = ½ Σ_d (e^{ℓ_d} + (μ_d − c_d)² − 1 − ℓ_d).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mixvae.model.routing import is_active

_LOG_2PI = math.log(2.0 * math.pi)
# At most this many training images go into the k-means fit of the pseudo-inputs.
KMEANS_MAX_IMAGES = 10_000
# The t-SNE warm start embeds this many principal components of the pixels.
TSNE_PCA_DIMS = 50


def gaussian_kl(mean: jax.Array, logvar: jax.Array, centre: jax.Array | float = 0.0) -> jax.Array:
    """KL(N(μ, diag e^ℓ) ‖ N(c, I)), summed over the last axis."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean - centre) - 1.0 - logvar, axis=-1)


def diag_gaussian_log_density(z: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; μ, diag e^ℓ), summed over the last axis."""
    return -0.5 * jnp.sum(_LOG_2PI + logvar + jnp.square(z - mean) * jnp.exp(-logvar), axis=-1)


def geometric_centres(arrangement: str, num_components: int, latent_dim: int, radius: float) -> np.ndarray:
    """Fixed centres c_k ∈ ℝ^D of geometric_mog, zeros beyond the first two dimensions.

    circle: c_k = (R cos 2πk/K, R sin 2πk/K); grid (K = g²): component k = i·g + j sits at (x_j, x_i)
    with x = linspace(−R, R, g).
    """
    if latent_dim < 2:
        raise ValueError(f"geometric_mog centres need model.latent_dim ≥ 2 (got {latent_dim})")
    centres = np.zeros((num_components, latent_dim), np.float32)
    if arrangement == "circle":
        angle = 2.0 * np.pi * np.arange(num_components) / num_components
        centres[:, 0] = radius * np.cos(angle)
        centres[:, 1] = radius * np.sin(angle)
    elif arrangement == "grid":
        side = math.isqrt(num_components)
        if side * side != num_components:
            raise ValueError(f"a grid arrangement needs a perfect-square K (got {num_components})")
        x = np.linspace(-radius, radius, side)
        i, j = np.divmod(np.arange(num_components), side)
        centres[:, 0] = x[j]
        centres[:, 1] = x[i]
    else:
        raise ValueError(f"model.geometric_arrangement must be 'circle' or 'grid' (got {arrangement!r})")
    return centres


def vamp_log_prior(z: jax.Array, pseudo_mean: jax.Array, pseudo_logvar: jax.Array) -> jax.Array:
    """log p(z) = logsumexp_k log N(z; m_k, diag e^{ℓ_k}) − log K, for z [..., D] and m, ℓ [K, D]."""
    log_densities = diag_gaussian_log_density(z[..., None, :], pseudo_mean, pseudo_logvar)  # [..., K]
    return jax.nn.logsumexp(log_densities, axis=-1) - math.log(pseudo_mean.shape[0])


def vamp_kl(key: jax.Array, mean: jax.Array, logvar: jax.Array, pseudo_mean: jax.Array,
            pseudo_logvar: jax.Array, num_samples: int) -> jax.Array:
    """(1/S) Σ_s [log q(z⁽ˢ⁾|x) − log p(z⁽ˢ⁾)], z⁽ˢ⁾ ~ q(z|x) drawn with ``key`` → [B]."""
    eps = jax.random.normal(key, (num_samples, *mean.shape), mean.dtype)
    z = mean + jnp.exp(0.5 * logvar) * eps  # [S, B, D]
    log_q = diag_gaussian_log_density(z, mean, logvar)
    log_p = vamp_log_prior(z, pseudo_mean, pseudo_logvar)
    return jnp.mean(log_q - log_p, axis=0)


def vamp_responsibilities(z_mean: jax.Array, pseudo_mean: jax.Array, pseudo_logvar: jax.Array,
                          active_mask: jax.Array) -> jax.Array:
    """r_k(x) = softmax_k log N(z_mean(x); m_k, diag e^{ℓ_k}) over the active components."""
    log_densities = diag_gaussian_log_density(z_mean[:, None, :], pseudo_mean, pseudo_logvar)  # [B, K]
    active = is_active(active_mask)
    probs = jax.nn.softmax(jnp.where(active, log_densities, -jnp.inf), axis=-1)
    return jnp.where(active, probs, 0.0)


def init_pseudo_inputs(cfg, train_x: np.ndarray) -> np.ndarray:
    """Initial VampPrior pseudo-inputs u_k from the training split → float32 [K, H, W, Ch].

    random: K distinct training images chosen with training.seed.
    kmeans: centroids of KMeans(n_clusters=K, n_init=10, random_state=training.seed) fitted on at most
    10 000 flattened training images, subsampled with training.seed.
    """
    train_x = np.asarray(train_x, np.float32)
    k = cfg.model.num_components
    seed = cfg.training.seed
    n = train_x.shape[0]
    if n < k:
        raise ValueError(f"the VampPrior needs at least K = {k} training images to initialise its "
                         f"pseudo-inputs, but the training split has {n}")
    rng = np.random.default_rng(seed)
    method = cfg.model.vamp_pseudo_init_method
    if method == "random":
        return train_x[rng.choice(n, size=k, replace=False)].copy()
    if method == "kmeans":
        from sklearn.cluster import KMeans  # lazy: keeps sklearn off the serving import path

        subset = train_x
        if n > KMEANS_MAX_IMAGES:
            subset = train_x[np.sort(rng.choice(n, size=KMEANS_MAX_IMAGES, replace=False))]
        flat = subset.reshape(subset.shape[0], -1)
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(flat)
        return km.cluster_centers_.astype(np.float32).reshape((k, *train_x.shape[1:]))
    raise ValueError(f"model.vamp_pseudo_init_method must be 'random' or 'kmeans' (got {method!r})")


def warm_start_clusters(cfg, train_x: np.ndarray) -> np.ndarray:
    """Cluster index a_b ∈ {0..K−1} of every training image → int32 [N], for the warm-start term.

    At most 10 000 training images (subsampled with training.seed) are clustered.

    kmeans: KMeans(n_clusters=K, n_init=10, random_state=training.seed) on the flattened pixels; every
    image then takes its nearest centroid.
    tsne: the pixels reduced to 50 principal components, embedded in 2-d by t-SNE (perplexity 30, or
    a third of the images on tiny splits; PCA initialisation, random_state=training.seed), and KMeans
    as above on that embedding. t-SNE keeps every image next to its nearest neighbours, so its
    clusters follow the digits' shapes rather than their ink (on MNIST-5k: 0.82 against 0.50 for
    k-means on pixels). t-SNE places no new points: an image left out of the embedding takes the
    cluster of its nearest embedded image.
    """
    return cluster_images(cfg.model.cluster_init, train_x, cfg.model.num_components, cfg.training.seed)


def cluster_images(method: str, train_x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The warm-start clustering ('kmeans' or 'tsne', as above) of ``train_x`` into k clusters →
    int32 [N]; the quality benchmark reports the same function as a baseline."""
    from sklearn.cluster import KMeans  # lazy: keeps sklearn off the serving import path

    flat = np.asarray(train_x, np.float32).reshape(len(train_x), -1)
    rng = np.random.default_rng(seed)
    chosen = (np.arange(len(flat)) if len(flat) <= KMEANS_MAX_IMAGES
              else np.sort(rng.choice(len(flat), KMEANS_MAX_IMAGES, replace=False)))
    if method == "kmeans":
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(flat[chosen])
        return km.predict(flat).astype(np.int32)
    if method != "tsne":
        raise ValueError(f"model.cluster_init must be 'kmeans' or 'tsne' (got {method!r})")
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from sklearn.neighbors import NearestNeighbors

    features = flat
    if flat.shape[1] > TSNE_PCA_DIMS:
        features = PCA(TSNE_PCA_DIMS, random_state=seed).fit(flat[chosen]).transform(flat).astype(np.float32)
    embedding = TSNE(2, perplexity=min(30.0, (len(chosen) - 1) / 3), init="pca",
                     random_state=seed).fit_transform(features[chosen])
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(embedding).astype(np.int32)
    if len(chosen) == len(flat):
        return labels
    _, nearest = NearestNeighbors(n_neighbors=1).fit(features[chosen]).kneighbors(features)
    return labels[nearest[:, 0]]


def training_neighbours(cfg, train_x: np.ndarray) -> np.ndarray:
    """The model.neighbour_count nearest other training images of every training image (Euclidean
    distance on the pixels) → int32 [N, k], for the neighbour-agreement term. Exact, and the same for
    every seed: the graph depends on the data only."""
    from sklearn.neighbors import NearestNeighbors  # lazy: keeps sklearn off the serving import path

    flat = np.asarray(train_x, np.float32).reshape(len(train_x), -1)
    k = min(cfg.model.neighbour_count, len(flat) - 1)
    if k < 1:
        raise ValueError(f"model.neighbour_weight needs at least 2 training images (got {len(flat)})")
    _, index = NearestNeighbors(n_neighbors=k + 1).fit(flat).kneighbors(flat)
    # Each image is normally its own nearest neighbour; drop it (or, among duplicates, the last column).
    own = index == np.arange(len(flat))[:, None]
    keep = np.where(own.any(axis=1, keepdims=True), ~own, np.arange(k + 1) < k)
    return index[keep].reshape(len(flat), k).astype(np.int32)
