"""Properties of the model's math: KLs, routing, gating, likelihoods, τ, entropy, dropout and the objective."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from mixvae.config import Config
from mixvae.model import MixVAE, ModelSpec, RouteCtx, blended_sigma, compute_terms, init_pseudo_inputs, tau
from mixvae.model import losses, priors, routing

SETTINGS = settings(max_examples=25, deadline=None)


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


def arrays(shape, lo=-5.0, hi=5.0):
    size = math.prod(shape)
    return st.lists(floats(lo, hi), min_size=size, max_size=size).map(
        lambda v: np.asarray(v, np.float32).reshape(shape))


K = 5  # fixed shapes keep every jitted helper below to one compilation
BATCH = 4


@st.composite
def logits_and_mask(draw):
    logits = draw(arrays((BATCH, K), -6.0, 6.0))
    bits = draw(st.lists(st.booleans(), min_size=K, max_size=K))
    bits[draw(st.integers(0, K - 1))] = True  # at least one component is active
    return logits, np.asarray(bits, np.float32)


# --- KLs ------------------------------------------------------------------------------------------

_gaussian_kl = jax.jit(priors.gaussian_kl)


@SETTINGS
@given(arrays((4, 3)), arrays((4, 3), -8, 8), arrays((3,)))
def test_gaussian_kl_is_nonnegative_and_zero_at_the_prior(mean, logvar, centre):
    kl = _gaussian_kl(mean, logvar, centre)
    assert kl.shape == (4,)
    assert np.all(np.asarray(kl) >= -1e-5)
    at_prior = _gaussian_kl(np.broadcast_to(centre, mean.shape), np.zeros_like(logvar), centre)
    np.testing.assert_allclose(at_prior, 0.0, atol=1e-6)


@jax.jit
def _categorical_kls(logits, mask, pi_logits):
    r = routing.masked_softmax(routing.mask_logits(logits, mask), mask)
    pi_active = routing.masked_softmax(routing.mask_logits(pi_logits[None], mask), mask)
    return losses.categorical_kl(r, pi_logits, mask), losses.categorical_kl(pi_active, pi_logits, mask)


@SETTINGS
@given(logits_and_mask(), arrays((K,), -3, 3))
def test_categorical_kl_is_nonnegative_and_zero_at_pi(case, pi_logits):
    logits, mask = case
    kl, kl_at_pi = _categorical_kls(logits, mask, pi_logits)
    assert np.all(np.asarray(kl) >= -1e-5)
    np.testing.assert_allclose(kl_at_pi, 0.0, atol=1e-5)  # r = π^A, the renormalised π over A


@functools.partial(jax.jit, static_argnums=(3,))
def _vamp_kl_against_copies(key, mean, logvar, num_pseudo):
    pseudo_mean = jnp.repeat(mean, num_pseudo, axis=0)
    pseudo_logvar = jnp.repeat(logvar, num_pseudo, axis=0)
    return priors.vamp_kl(key, mean, logvar, pseudo_mean, pseudo_logvar, num_samples=3)


@SETTINGS
@given(arrays((1, 3)), arrays((1, 3), -3, 3), st.sampled_from([1, 4]), st.integers(0, 2**31 - 1))
def test_vamp_kl_is_zero_when_every_pseudo_posterior_equals_q(mean, logvar, num_pseudo, seed):
    kl = _vamp_kl_against_copies(jax.random.PRNGKey(seed), mean, logvar, num_pseudo)
    np.testing.assert_allclose(kl, 0.0, atol=1e-4)


def test_vamp_kl_is_positive_away_from_the_prior():
    mean, logvar = jnp.full((2, 3), 4.0), jnp.full((2, 3), -2.0)
    kl = priors.vamp_kl(jax.random.PRNGKey(0), mean, logvar, jnp.zeros((3, 3)), jnp.zeros((3, 3)), 16)
    assert np.all(np.asarray(kl) > 1.0)


# --- routing ----------------------------------------------------------------------------------------

def _ctx(mask, temperature=1.0, st_switch=1.0):
    mask = jnp.asarray(mask, jnp.float32)
    return RouteCtx(active_mask=mask, kick_bias=jnp.zeros_like(mask),
                    temperature=jnp.asarray(temperature, jnp.float32),
                    straight_through=jnp.asarray(st_switch, jnp.float32))


@jax.jit
def _straight_through_case(logits, mask, temperature, key, coeffs):
    def routed(y, st_switch):
        return routing.route(y, _ctx(mask, temperature, st_switch), train=True, key=key, use_gumbel=True,
                             use_straight_through=True)

    out = routed(logits, 1.0)
    grad_st = jax.grad(lambda y: jnp.sum(coeffs * routed(y, 1.0).routing))(logits)
    grad_soft = jax.grad(lambda y: jnp.sum(coeffs * routed(y, 1.0).soft_sample))(logits)
    return out.routing, out.soft_sample, grad_st, grad_soft, routed(logits, 0.0).routing


@SETTINGS
@given(logits_and_mask(), st.integers(0, 2**31 - 1), floats(0.3, 3.0), arrays((BATCH, K)))
def test_straight_through_is_one_hot_forward_with_the_soft_gradient(case, seed, temperature, coeffs):
    logits, mask = case
    s, soft, grad_st, grad_soft, s_off = map(np.asarray, _straight_through_case(
        logits, mask, np.float32(temperature), jax.random.PRNGKey(seed), coeffs))
    hard = np.eye(K, dtype=np.float32)[soft.argmax(-1)]
    assert np.all(s[hard == 0] == 0.0)  # exactly 0 off the sampled component
    np.testing.assert_allclose(s[hard == 1], 1.0, atol=1e-6)
    assert np.all(soft[:, mask == 0] == 0.0)
    np.testing.assert_allclose(grad_st, grad_soft, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s_off, soft)  # the kick's switch: s is the soft sample itself


@functools.partial(jax.jit, static_argnames=("train", "mode"))
def _masked_case(logits, mask, bias, pi_logits, coeffs, key, *, train, mode):
    ctx = _ctx(mask, 0.7).replace(kick_bias=bias)
    use_gumbel, use_st = mode != "plain", mode == "st"

    def loss(y, pi):
        routed = routing.route(y, ctx, train=train, key=key, use_gumbel=use_gumbel, use_straight_through=use_st)
        r = routed.responsibilities
        value = (jnp.sum(coeffs * routed.routing) + jnp.sum(losses.categorical_kl(r, pi, mask))
                 + jnp.sum(losses.logit_mog_neg_log_prior(y, mask, 5.0, 1.0))
                 + losses.usage_entropy(r, jnp.ones(r.shape[0])) + losses.dirichlet_neg_log_prior(pi, mask, 2.0))
        return value, routed

    (value, routed), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(logits, pi_logits)
    return value, routed.responsibilities, routed.routing, grads


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("mode", ["plain", "soft", "st"])
def test_masked_components_have_exactly_zero_weight_and_finite_gradients(mode, train):
    @settings(max_examples=10, deadline=None)
    @given(logits_and_mask(), arrays((K,), 0, 5), arrays((K,), -2, 2), arrays((BATCH, K)), st.integers(0, 2**31 - 1))
    def check(case, bias, pi_logits, coeffs, seed):
        logits, mask = case
        value, r, s, (grad_y, grad_pi) = _masked_case(logits, mask, bias, pi_logits, coeffs,
                                                      jax.random.PRNGKey(seed), train=train, mode=mode)
        inactive = mask == 0
        assert np.all(np.asarray(r)[:, inactive] == 0.0)
        assert np.all(np.asarray(s)[:, inactive] == 0.0)
        np.testing.assert_allclose(np.asarray(r).sum(-1), 1.0, atol=1e-5)
        assert np.isfinite(value)
        assert np.all(np.isfinite(grad_y)) and np.all(np.isfinite(grad_pi))
        assert np.all(np.asarray(grad_pi)[inactive] == 0.0)

    check()


def test_evaluation_routing_has_no_noise():
    logits = jnp.asarray([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0]])
    ctx = _ctx([1.0, 1.0, 1.0], temperature=0.5)
    key = jax.random.PRNGKey(0)
    plain = routing.route(logits, ctx, train=False, key=key, use_gumbel=False, use_straight_through=False)
    np.testing.assert_array_equal(plain.routing, jax.nn.softmax(logits))
    st_eval = routing.route(logits, ctx, train=False, key=key, use_gumbel=True, use_straight_through=True)
    np.testing.assert_array_equal(st_eval.routing, [[0, 1, 0], [1, 0, 0]])  # ties go to the lower index
    soft_eval = routing.route(logits, ctx, train=False, key=key, use_gumbel=True, use_straight_through=False)
    np.testing.assert_allclose(soft_eval.routing, jax.nn.softmax(logits / 0.5), rtol=1e-6)
    assert soft_eval.soft_sample is None


def test_top_m_selection_prefers_lower_index_on_ties_and_ranks_inactive_last():
    ranking = jnp.asarray([[0.25, 0.25, 0.5, 0.0], [0.0, 0.0, 0.0, 1.0]])
    mask = jnp.asarray([1.0, 1.0, 1.0, 0.0])
    s = ranking.at[1].set(jnp.asarray([0.0, 1.0, 0.0, 0.0]))
    index, weight = routing.select_decoded(ranking, s, mask, 2)
    np.testing.assert_array_equal(index[0], [2, 0])
    np.testing.assert_allclose(weight[0], [0.5 / 0.75, 0.25 / 0.75], rtol=1e-6)
    assert 3 not in np.asarray(index[1])  # the inactive component ranks after every active one
    np.testing.assert_array_equal(index[1], [0, 1])
    full_index, full_weight = routing.select_decoded(ranking, s, mask, 4)  # M = K: all, w = s
    np.testing.assert_array_equal(full_index, np.tile(np.arange(4), (2, 1)))
    assert full_weight is s


# --- top-M on the real model ---------------------------------------------------------------------------

def _cfg(**model):
    base = {"hidden_dims": [16], "num_components": 4, "num_classes": 3, "latent_dim": 2}
    return Config.model_validate({"model": {**base, **model}})


def _forward_pair(cfg_a, cfg_b, train):
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    outs = []
    for cfg in (cfg_a, cfg_b):
        graphdef, state = nnx.split(MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0)))

        @jax.jit
        def run(state, x, key):
            model = nnx.merge(graphdef, state)
            fwd = model(x, RouteCtx.default(cfg), train=train, key=key)
            return fwd, compute_terms(cfg, model, fwd, x, -jnp.ones(6, jnp.int32), jnp.ones(6), None)

        outs.append(run(state, x, jax.random.PRNGKey(5)))
    return outs


@pytest.mark.parametrize("train", [True, False])
def test_top_m_equal_to_k_is_bit_identical_to_full_decoding(train):
    gumbel = {"use_gumbel_softmax": True, "latent_layout": "decentralized"}
    (fwd_0, terms_0), (fwd_k, terms_k) = _forward_pair(_cfg(top_m_gating=0, **gumbel),
                                                       _cfg(top_m_gating=4, **gumbel), train)
    for a, b in zip(jax.tree_util.tree_leaves(fwd_0), jax.tree_util.tree_leaves(fwd_k)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(terms_0), jax.tree_util.tree_leaves(terms_k)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("train", [True, False])
def test_top_1_with_straight_through_matches_full_decoding_forward(train):
    gumbel = {"use_gumbel_softmax": True, "use_straight_through_gumbel": True, "decoder_conditioning": "film"}
    (fwd_0, terms_0), (fwd_1, terms_1) = _forward_pair(_cfg(top_m_gating=0, **gumbel),
                                                       _cfg(top_m_gating=1, **gumbel), train)
    assert fwd_1.out.shape[1] == 1 and fwd_0.out.shape[1] == 4
    np.testing.assert_allclose(fwd_1.recon, fwd_0.recon, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(terms_1.image["loss.recon"], terms_0.image["loss.recon"], rtol=1e-5)
    np.testing.assert_array_equal(fwd_1.decoded_index[:, 0], np.argmax(fwd_0.routing, axis=-1))


# --- logit-MoG prior --------------------------------------------------------------------------------

_logit_mog = jax.jit(losses.logit_mog_neg_log_prior)


@SETTINGS
@given(st.sampled_from([2, 5, 16]), floats(0.3, 3.0), floats(3.0, 8.0), st.data())
def test_logit_mog_prefers_axis_aligned_logits_over_flat_ones(k, sigma, ratio, data):
    mode_offset = ratio * sigma  # M/σ ≥ 3: peaked enough that every one-hot mode beats every flat vector
    axis = data.draw(st.integers(0, k - 1))
    flat_value = data.draw(floats(-10.0, 10.0))
    mask = np.ones((k,), np.float32)
    aligned = np.zeros((1, k), np.float32)
    aligned[0, axis] = mode_offset
    flat = np.full((1, k), flat_value, np.float32)
    nlp_aligned = _logit_mog(aligned, mask, np.float32(mode_offset), np.float32(sigma))
    nlp_flat = _logit_mog(flat, mask, np.float32(mode_offset), np.float32(sigma))
    assert float(nlp_aligned[0]) < float(nlp_flat[0])


def test_logit_mog_matches_the_formula_and_uses_only_the_active_set():
    y = jnp.asarray([[1.0, -0.5, 2.0, 0.3]])
    mask = jnp.asarray([1.0, 0.0, 1.0, 1.0])
    m, s, k = 5.0, 1.5, 4
    comps = [-(k / 2) * math.log(2 * math.pi * s**2) - float(jnp.sum((y[0] - m * jnp.eye(k)[j]) ** 2)) / (2 * s**2)
             for j in (0, 2, 3)]
    expected = -(np.logaddexp.reduce(comps) - math.log(3))
    np.testing.assert_allclose(losses.logit_mog_neg_log_prior(y, mask, m, s)[0], expected, rtol=1e-5)


# --- likelihoods ------------------------------------------------------------------------------------

_nll_pixel = jax.jit(losses.gaussian_nll_pixel)
_nll_image = jax.jit(losses.gaussian_nll_image)
_nll_image_grad = jax.jit(jax.grad(lambda mean, sigma, x: jnp.sum(losses.gaussian_nll_image(mean, sigma, x)),
                                   argnums=1))
_bernoulli = jax.jit(losses.bernoulli_nll)

@SETTINGS
@given(arrays((2, 3, 2, 1), 0.0, 1.0), arrays((2, 3, 2, 1), -2.0, 2.0), floats(0.5, 2.0))
def test_heteroscedastic_pixel_nll_is_minimal_at_the_squared_error(x, mean, factor):
    residual = np.abs(x - mean)
    residual = np.where(residual < 1e-2, 1e-2, residual).astype(np.float32)
    x = mean + residual  # keep every |x − μ| ≥ 0.01 so the optimum σ is positive
    best = _nll_pixel(mean, residual, x)
    for scale in (factor, 1.0 / factor, 1.05, 0.95):
        other = _nll_pixel(mean, (residual * scale).astype(np.float32), x)
        assert np.all(np.asarray(best) <= np.asarray(other) + 1e-4)


def test_pixel_nll_as_written_for_speed_equals_the_textbook_form():
    """gaussian_nll_pixel computes ½((x − μ)/σ)² + log σ over a flat pixel axis (faster on XLA:CPU):
    values and gradients equal those of Σ_(H, W, Ch) (x − μ)²/(2σ²) + log σ, with the images broadcast
    over the components as the objective does."""
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    mean = jax.random.normal(k[0], (4, 3, 5, 6, 1))
    sigma = 0.01 + 0.99 * jax.nn.sigmoid(jax.random.normal(k[1], (4, 3, 5, 6, 1)))
    x = jax.random.uniform(k[2], (4, 1, 5, 6, 1))

    def textbook(mean, sigma, x):
        per_pixel = jnp.square(x - mean) / (2.0 * jnp.square(sigma)) + jnp.log(sigma)
        return jnp.sum(per_pixel, axis=(-3, -2, -1)) + 0.5 * 30 * math.log(2.0 * math.pi)

    np.testing.assert_allclose(_nll_pixel(mean, sigma, x), jax.jit(textbook)(mean, sigma, x), rtol=1e-6)
    assert _nll_pixel(mean, sigma, x).shape == (4, 3)
    grads = [jax.jit(jax.grad(lambda m, s, f=f: jnp.sum(f(m, s, x) * jnp.arange(1.0, 13.0).reshape(4, 3)),
                              argnums=(0, 1)))(mean, sigma) for f in (losses.gaussian_nll_pixel, textbook)]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@SETTINGS
@given(arrays((3, 4, 3, 2), 0.0, 1.0), arrays((3, 4, 3, 2), -2.0, 2.0), floats(0.5, 2.0))
def test_heteroscedastic_image_nll_is_minimal_at_the_mean_squared_error(x, mean, factor):
    x = x + np.float32(0.05)  # a nonzero residual somewhere
    mse = np.mean((x - mean) ** 2, axis=(1, 2, 3))
    best_sigma = np.sqrt(mse).astype(np.float32)
    best = _nll_image(mean, best_sigma, x)
    for scale in (factor, 1.0 / factor, 1.05, 0.95):
        other = _nll_image(mean, (best_sigma * scale).astype(np.float32), x)
        assert np.all(np.asarray(best) <= np.asarray(other) + 1e-3)
    # σ² = mean squared error sets the derivative to zero: ∂ℓ/∂σ = −Σ(x−μ)²/σ³ + P/σ.
    grad = _nll_image_grad(mean, best_sigma, x)
    np.testing.assert_allclose(grad, 0.0, atol=1e-2 * x[0].size)


@SETTINGS
@given(arrays((2, 4, 4, 1), -8.0, 8.0), arrays((2, 4, 4, 1), 0.0, 1.0))
def test_bernoulli_loss_on_logits_equals_bce_on_probabilities(logits, x):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    bce = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(_bernoulli(logits, x), bce, rtol=1e-4, atol=1e-4)


def test_bernoulli_nll_over_flat_pixels_equals_the_sum_over_h_w_ch():
    """bernoulli_nll sums over one flat pixel axis (faster on XLA:CPU): values and gradients equal
    the sum over (H, W, Ch), with the images broadcast over the components as the objective does."""
    k = jax.random.split(jax.random.PRNGKey(1), 2)
    logits, x = 3.0 * jax.random.normal(k[0], (4, 3, 5, 6, 1)), jax.random.uniform(k[1], (4, 1, 5, 6, 1))

    def by_axes(logits, x):
        return jnp.sum(jax.nn.softplus(logits) - x * logits, axis=(-3, -2, -1))

    np.testing.assert_allclose(_bernoulli(logits, x), jax.jit(by_axes)(logits, x), rtol=1e-6)
    weights = jnp.arange(1.0, 13.0).reshape(4, 3)
    got, want = (jax.jit(jax.grad(lambda o, f=f: jnp.sum(f(o, x) * weights)))(logits)
                 for f in (losses.bernoulli_nll, by_axes))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_squared_error_from_the_head_input_equals_the_squared_error_of_the_means():
    """‖x − b − h′W‖² expanded (the means never formed) equals Σ_p (x_p − μ_p)², and the quadratic
    form's own gradient equals automatic differentiation of the plain expression."""
    k = jax.random.split(jax.random.PRNGKey(3), 4)
    h, kernel = jax.random.normal(k[0], (4, 3, 5)), 0.3 * jax.random.normal(k[1], (5, 12))
    bias, x = 0.1 * jax.random.normal(k[2], (12,)), jax.random.uniform(k[3], (4, 3, 4, 1))
    weights = jnp.arange(1.0, 13.0).reshape(4, 3)

    def expanded(h, kernel, bias):
        return jnp.sum(weights * losses.squared_error_from_head(losses.LinearHead(h, kernel, bias), x))

    def from_means(h, kernel, bias):
        return jnp.sum(weights * losses.squared_error((h @ kernel + bias).reshape(4, 3, 3, 4, 1), x[:, None]))

    def plain_quadratic(h, kernel):
        return jnp.sum(weights * jnp.sum((h @ (kernel @ kernel.T)) * h, axis=-1))

    got, want = (jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(h, kernel, bias) for f in (expanded, from_means))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    custom, auto = (jax.jit(jax.grad(f, argnums=(0, 1)))(h, kernel) for f in
                    (lambda h, w: jnp.sum(weights * losses.gram_quadratic_form(h, w)), plain_quadratic))
    for a, b in zip(custom, auto):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _dense_squared_error_cfg(likelihood: str):
    hetero = {"use_heteroscedastic_decoder": True, "sigma_granularity": "image"} if likelihood == "gaussian" else {}
    return Config.model_validate({"model": {
        "hidden_dims": [16], "num_components": 6, "num_classes": 3, "latent_dim": 2, "reconstruction_loss": "mse",
        "latent_layout": "decentralized", **hetero}})


@pytest.mark.parametrize("likelihood", ["mse", "gaussian"])
def test_the_kept_dense_head_gives_the_same_loss_gradients_reconstruction_and_sigma(likelihood):
    """Where the forward pass keeps the dense head (16×16 images, 6 components decoded), the recon term,
    its gradients, x̂ and σ̂ equal those computed from the formed mean images."""
    cfg = _dense_squared_error_cfg(likelihood)
    graphdef, state = nnx.split(MixVAE(cfg, (16, 16, 1), rngs=nnx.Rngs(0)))
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 16, 16, 1))

    def recon_loss(state, keep_head: bool):
        model = nnx.merge(graphdef, state)
        fwd = model(x, RouteCtx.default(cfg), train=True, key=jax.random.PRNGKey(5))
        assert fwd.head is not None
        if not keep_head:
            fwd = fwd.replace(head=None, recon=jnp.einsum("bm,bmhwc->bhwc", fwd.decoded_weight, fwd.out))
        terms = compute_terms(cfg, model, fwd, x, -jnp.ones(6, jnp.int32), jnp.ones(6), None)
        sigma = blended_sigma(fwd)
        return jnp.sum(terms.image["loss.recon"]), (fwd.recon, jnp.zeros(()) if sigma is None else sigma)

    (kept, (recon_kept, sigma_kept)), grads_kept = jax.jit(
        jax.value_and_grad(lambda s: recon_loss(s, True), has_aux=True))(state)
    (formed, (recon_formed, sigma_formed)), grads_formed = jax.jit(
        jax.value_and_grad(lambda s: recon_loss(s, False), has_aux=True))(state)
    np.testing.assert_allclose(kept, formed, rtol=1e-5)
    np.testing.assert_allclose(recon_kept, recon_formed, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma_kept, sigma_formed, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(grads_kept), jax.tree_util.tree_leaves(grads_formed)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))  # float rounding


def test_the_dense_head_is_kept_only_for_squared_errors_where_it_saves_multiplications():
    spec = ModelSpec.from_config(_dense_squared_error_cfg("gaussian"), (28, 28, 1))
    assert spec.expansion_pays(128, 20, 256)          # the reference's dense setting
    assert not spec.expansion_pays(128, 2, 256)       # top-2: forming two means is cheaper
    assert not spec.expansion_pays(128, 20, 1024)     # wider than the image
    for model in ({"reconstruction_loss": "bce"}, {"use_heteroscedastic_decoder": True, "sigma_granularity": "pixel"},
                  {"decoder_type": "conv"}):
        cfg = Config.model_validate({"model": {"num_components": 20, "reconstruction_loss": "mse", **model}})
        assert not ModelSpec.from_config(cfg, (28, 28, 1)).expansion_pays(128, 20, 256), model
    bf16 = Config.model_validate({"model": {"reconstruction_loss": "mse"}, "training": {"decode_dtype": "bfloat16"}})
    assert not ModelSpec.from_config(bf16, (28, 28, 1)).expansion_pays(128, 20, 256)


def test_squared_error_is_the_sum_of_squares():
    x, mean = jnp.ones((1, 2, 2, 1)), jnp.zeros((1, 2, 2, 1))
    assert float(losses.squared_error(mean, x)[0]) == 4.0


# --- τ ------------------------------------------------------------------------------------------------

_update_counts = jax.jit(tau.update_counts)
C = 3


@SETTINGS
@given(arrays((6, K)), st.lists(st.integers(-1, C - 1), min_size=6, max_size=6),
       st.lists(st.sampled_from([0.0, 1.0]), min_size=6, max_size=6))
def test_tau_update_ignores_unlabeled_and_padded_images(logits, labels, valid):
    r = np.asarray(jax.nn.softmax(logits), np.float32)
    labels, valid = np.asarray(labels, np.int32), np.asarray(valid, np.float32)
    updated = _update_counts(tau.init_counts(K, C, 1.0), r, labels, valid)
    expected = np.ones((K, C), np.float32)
    for b in np.flatnonzero((labels >= 0) & (valid > 0)):
        expected[:, labels[b]] += r[b]
    np.testing.assert_allclose(updated, expected, rtol=1e-5, atol=1e-6)


def test_tau_update_has_no_gradient():
    counts = tau.init_counts(3, 2, 1.0)
    grad = jax.grad(lambda r: jnp.sum(tau.update_counts(counts, r, jnp.asarray([0, 1]), jnp.ones(2))))(
        jnp.full((2, 3), 1 / 3))
    np.testing.assert_array_equal(grad, 0.0)


@jax.jit
def _tau_outputs(logits, counts):
    r = jax.nn.softmax(logits)
    t = tau.tau_map(counts)
    return t, tau.ood_score(r, t), tau.predict(r, t)


@SETTINGS
@given(arrays((5, K), -10, 10), arrays((K, C), 0.01, 50.0))
def test_ood_score_and_certainty_are_in_range(logits, counts):
    t, score, (pred, certainty, p) = _tau_outputs(logits, counts)
    np.testing.assert_allclose(t.sum(-1), 1.0, rtol=1e-5)
    score = np.asarray(score)
    assert np.all((score >= 0.0) & (score <= 1.0))
    assert np.all((np.asarray(certainty) >= 1.0 / C - 1e-6) & (np.asarray(certainty) <= 1.0 + 1e-6))
    np.testing.assert_array_equal(pred, np.argmax(np.asarray(p), -1))


def test_ood_score_extremes():
    confident = tau.ood_score(jnp.asarray([[1.0, 0.0]]), jnp.asarray([[1.0, 0.0], [0.5, 0.5]]))
    np.testing.assert_allclose(confident, 0.0, atol=1e-7)
    vague = tau.ood_score(jnp.asarray([[0.5, 0.5]]), jnp.asarray([[0.5, 0.5], [0.5, 0.5]]))
    np.testing.assert_allclose(vague, 0.75, rtol=1e-6)


def test_tau_decay_free_components_and_cross_entropy():
    counts = jnp.asarray([[1.0, 5.0], [1.0, 1.2], [3.0, 1.0]])
    np.testing.assert_allclose(tau.decay_counts(counts, 1.0, 0.5), [[1.0, 3.0], [1.0, 1.1], [2.0, 1.0]])
    np.testing.assert_array_equal(tau.decay_counts(counts, 1.0, 1.0), counts)
    free = tau.free_components(counts, 1.0, 1.0, jnp.asarray([1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(free, [False, True, False])  # inactive components are never free
    r = jnp.asarray([[1.0, 0.0, 0.0]])
    ce = tau.cross_entropy(r, tau.tau_map(counts), jnp.asarray([1]))
    np.testing.assert_allclose(ce, -np.log(5 / 6 + 1e-8), rtol=1e-6)


# --- priors -----------------------------------------------------------------------------------------

def test_geometric_centres_circle_and_grid():
    circle = priors.geometric_centres("circle", 4, 3, 2.0)
    np.testing.assert_allclose(circle, [[2, 0, 0], [0, 2, 0], [-2, 0, 0], [0, -2, 0]], atol=1e-6)
    grid = priors.geometric_centres("grid", 9, 2, 1.0)
    # component k = i·g + j sits at (x_j, x_i), x = linspace(−R, R, g)
    np.testing.assert_allclose(grid[1], [0.0, -1.0])
    np.testing.assert_allclose(grid[5], [1.0, 0.0])
    with pytest.raises(ValueError, match="perfect-square"):
        priors.geometric_centres("grid", 8, 2, 1.0)


def test_init_pseudo_inputs_random_and_kmeans():
    rng = np.random.default_rng(0)
    train_x = rng.uniform(size=(40, 4, 3, 1)).astype(np.float32)
    cfg = Config.model_validate({"model": {"prior_type": "vamp", "num_components": 5, "decoder_conditioning": "none"},
                                 "training": {"seed": 3}})
    pseudo = init_pseudo_inputs(cfg, train_x)
    assert pseudo.shape == (5, 4, 3, 1) and pseudo.dtype == np.float32
    flat = train_x.reshape(40, -1)
    rows = [int(np.flatnonzero((flat == p.reshape(-1)).all(1))[0]) for p in pseudo]
    assert len(set(rows)) == 5  # K distinct training images
    np.testing.assert_array_equal(pseudo, init_pseudo_inputs(cfg, train_x))  # seeded
    kcfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vamp_pseudo_init_method": "kmeans"})})
    centroids = init_pseudo_inputs(kcfg, train_x)
    assert centroids.shape == (5, 4, 3, 1) and np.all(np.isfinite(centroids))
    with pytest.raises(ValueError, match="at least K"):
        init_pseudo_inputs(cfg, train_x[:3])


@pytest.mark.parametrize("method", ["kmeans", "tsne"])
def test_warm_start_clustering_recovers_separated_groups(method, monkeypatch):
    # three tight groups of 30 images in 64 pixels (above the 50 principal components t-SNE embeds)
    rng = np.random.default_rng(0)
    centres = rng.uniform(size=(3, 64)) * 4
    truth = np.repeat(np.arange(3), 30)
    train_x = (centres[truth] + 0.05 * rng.normal(size=(90, 64))).astype(np.float32).reshape(90, 8, 8, 1)
    clusters = priors.cluster_images(method, train_x, 3, seed=1)
    assert clusters.dtype == np.int32 and clusters.shape == (90,)
    # the same partition as the truth, up to the clusters' names
    assert len(set(zip(clusters.tolist(), truth.tolist()))) == 3 == len(set(clusters.tolist()))
    np.testing.assert_array_equal(clusters, priors.cluster_images(method, train_x, 3, seed=1))  # seeded
    # above the cap a subsample is clustered and every other image joins its nearest clustered image
    monkeypatch.setattr(priors, "KMEANS_MAX_IMAGES", 60)
    capped = priors.cluster_images(method, train_x, 3, seed=1)
    assert len(set(zip(capped.tolist(), truth.tolist()))) == 3
    with pytest.raises(ValueError, match="'kmeans' or 'tsne'"):
        priors.cluster_images("spectral", train_x, 3, seed=1)


def test_vamp_responsibilities_follow_the_nearest_pseudo_component():
    pseudo_mean = jnp.asarray([[0.0, 0.0], [5.0, 5.0]])
    r = priors.vamp_responsibilities(jnp.asarray([[4.5, 5.2], [0.1, -0.3]]), pseudo_mean, jnp.zeros((2, 2)),
                                     jnp.ones(2))
    np.testing.assert_array_equal(np.argmax(r, -1), [1, 0])
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-6)


# --- the objective's new terms ---------------------------------------------------------------------------

def test_usage_balance_is_zero_for_uniform_usage_and_positive_when_concentrated():
    pi_logits, mask = jnp.zeros(4), jnp.ones(4)
    valid = jnp.ones(8)
    uniform_usage = jnp.tile(jnp.eye(4), (2, 1))  # each component takes two of the eight images
    assert float(losses.usage_balance(uniform_usage, valid, pi_logits, mask)) == pytest.approx(0.0, abs=1e-6)
    one_component = jnp.tile(jnp.array([[1.0, 0, 0, 0]]), (8, 1))
    assert float(losses.usage_balance(one_component, valid, pi_logits, mask)) == pytest.approx(math.log(4), rel=1e-5)
    # padded slots do not count: the valid images alone use the components evenly
    padded = jnp.concatenate([uniform_usage, one_component])
    valid_padded = jnp.concatenate([valid, jnp.zeros(8)])
    assert float(losses.usage_balance(padded, valid_padded, pi_logits, mask)) == pytest.approx(0.0, abs=1e-6)


def _objective_parts(cfg, factors, cluster_target=None, neighbour_r=None):
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    model = MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0))
    fwd = model(x, RouteCtx.default(cfg), train=False, key=jax.random.PRNGKey(5))
    labels, valid = -jnp.ones(6, jnp.int32), jnp.ones(6)
    f = losses.Factors(**{k: jnp.float32(v) for k, v in factors.items()})
    return losses.objective(cfg, model, fwd, x, labels, valid, None, f, cluster_target, neighbour_r)


def test_neighbour_disagreement_is_zero_when_both_pick_one_component_and_grows_as_they_part():
    one_hot = jnp.eye(4)[jnp.array([0, 2])]
    np.testing.assert_allclose(losses.neighbour_disagreement(one_hot, one_hot), [0.0, 0.0], atol=1e-6)
    uniform = jnp.full((2, 4), 0.25)
    np.testing.assert_allclose(losses.neighbour_disagreement(one_hot, uniform), [math.log(4)] * 2, rtol=1e-6)
    # two confident images on different components: clipped, finite, large
    apart = losses.neighbour_disagreement(one_hot[:1], one_hot[1:])
    assert np.isfinite(apart).all() and float(apart[0]) > 10
    # the gradient reaches both images' responsibilities
    r = jnp.array([[0.7, 0.2, 0.1, 0.0]])
    grad_a, grad_b = jax.grad(lambda a, b: losses.neighbour_disagreement(a, b).sum(), argnums=(0, 1))(r, r[:, ::-1])
    assert float(jnp.abs(grad_a).sum()) > 0 and float(jnp.abs(grad_b).sum()) > 0


def test_objective_adds_the_neighbour_term_with_its_weight():
    cfg = _cfg(latent_layout="decentralized", neighbour_weight=3.0)
    factors = {"kl_z": 1.0, "kl_c": 1.0, "cluster_init": 0.0}
    base, base_terms = _objective_parts(cfg, factors)
    assert "loss.neighbour" not in base_terms.step  # no neighbour responsibilities given: no term
    neighbour_r = jnp.tile(jnp.eye(4)[:1], (6, 1))  # every neighbour sits on component 0
    loss, terms = _objective_parts(cfg, factors, neighbour_r=neighbour_r)
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    model = MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0))
    r = model(x, RouteCtx.default(cfg), train=False, key=jax.random.PRNGKey(5)).responsibilities
    expected = 3.0 * float(jnp.mean(-jnp.log(r[:, 0])))
    assert float(terms.step["loss.neighbour"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(float(base) + expected, rel=1e-5)


def test_responsibilities_alone_equal_those_of_the_forward_pass():
    for cfg in (_cfg(latent_layout="decentralized"), _cfg(prior_type="vamp")):
        x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
        graphdef, state = nnx.split(MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0)))
        ctx = RouteCtx.default(cfg)

        @jax.jit  # jitted whole: op by op, every primitive would be compiled apart
        def both(state, x):
            model = nnx.merge(graphdef, state)
            return model.responsibilities(x, ctx), model(x, ctx, train=True, key=jax.random.PRNGKey(5)).responsibilities
        alone, in_forward = both(state, x)
        np.testing.assert_allclose(alone, in_forward, rtol=1e-5, atol=1e-7)


def test_training_neighbours_are_the_nearest_other_images():
    from mixvae.model.priors import training_neighbours
    # images on a line: 0, 1, 2, 10, 11, 30 (pixel value), one duplicate of image 1
    values = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 30.0, 1.0], np.float32)
    train_x = np.broadcast_to(values[:, None, None, None], (7, 2, 2, 1)).copy()
    cfg = _cfg(latent_layout="decentralized", neighbour_weight=1.0, neighbour_count=2)
    nb = training_neighbours(cfg, train_x)
    assert nb.shape == (7, 2) and nb.dtype == np.int32
    assert all(i not in row for i, row in enumerate(nb))  # never itself
    assert set(nb[0]) == {1, 6}  # the two images at distance 1
    assert set(nb[3]) == {4, 2}
    assert set(nb[1]) == {6, 0} or set(nb[1]) == {6, 2}  # its duplicate first
    np.testing.assert_array_equal(nb, training_neighbours(cfg, train_x))  # the same every time


def test_objective_is_the_weighted_sum_of_its_terms_with_the_schedule_factors():
    cfg = _cfg(latent_layout="decentralized", usage_balance_weight=2.0, kl_c_weight=0.3)
    loss, terms = _objective_parts(cfg, {"kl_z": 0.5, "kl_c": 0.25, "cluster_init": 1.0})
    mean = {k: float(jnp.mean(v)) for k, v in terms.image.items()}
    expected = (mean["loss.recon"] + 0.5 * mean["loss.kl_z"] + 0.25 * mean["loss.kl_c"]
                + float(terms.step["loss.usage_balance"]))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert set(terms.step) == {"loss.usage_balance"}


def test_objective_adds_the_warm_start_term_scaled_by_gamma():
    cfg = _cfg(latent_layout="decentralized", cluster_init="kmeans", cluster_init_weight=2.0)
    target = jnp.array([0, 1, 2, 3, 0, 1], jnp.int32)
    base, _ = _objective_parts(cfg, {"kl_z": 1.0, "kl_c": 1.0, "cluster_init": 0.0}, target)
    loss, terms = _objective_parts(cfg, {"kl_z": 1.0, "kl_c": 1.0, "cluster_init": 0.5}, target)
    warm = float(terms.step["loss.cluster_init"])
    assert warm > 0
    assert float(loss) == pytest.approx(float(base) + warm, rel=1e-5)


def test_responsibility_weighted_latent_kl_charges_each_image_for_its_components():
    cfg = _cfg(latent_layout="decentralized")
    uniform_cfg = _cfg(latent_layout="decentralized", latent_kl_weighting="uniform")
    x = jax.random.uniform(jax.random.PRNGKey(1), (6, 8, 8, 1))
    fwds = [MixVAE(c, (8, 8, 1), rngs=nnx.Rngs(0))(x, RouteCtx.default(c), train=False, key=jax.random.PRNGKey(5))
            for c in (cfg, uniform_cfg)]
    per_component = np.asarray(fwds[0].kl_per_component)
    np.testing.assert_allclose(fwds[0].kl_z, (np.asarray(fwds[0].responsibilities) * per_component).sum(-1),
                               rtol=1e-5)
    np.testing.assert_allclose(fwds[1].kl_z, per_component.sum(-1), rtol=1e-5)


# --- entropy, dropout and the objective's term names ------------------------------------------------

def test_one_entropy_for_device_and_host_arrays():
    from mixvae.model.entropy import entropy
    p = np.asarray([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    expected = [np.log(2.0), 0.0, -(0.2 * np.log(0.2) + 0.3 * np.log(0.3) + 0.5 * np.log(0.5))]
    host = entropy(p)
    assert host.dtype == np.float64  # host metrics keep their precision
    np.testing.assert_allclose(host, expected, rtol=1e-12)
    np.testing.assert_allclose(entropy(jnp.asarray(p, jnp.float32)), expected, rtol=1e-6)
    grad = jax.grad(lambda q: entropy(q)[0])(jnp.asarray(p, jnp.float32))
    assert np.all(np.isfinite(grad)) and float(grad[0, 2]) == 0.0  # no NaN where p = 0


def test_classifier_head_dropout_draws_from_the_explicit_key_and_holds_no_rng_state():
    from mixvae.model.networks import ClassifierHead
    head = ClassifierHead(4, 64, 3, 0.5, rngs=nnx.Rngs(0))
    assert not jax.tree_util.tree_leaves(nnx.state(head, nnx.RngState))
    h, key, other = jnp.ones((8, 4)), jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    trained = head(h, train=True, key=key)
    np.testing.assert_array_equal(trained, head(h, train=True, key=key))
    assert not np.allclose(trained, head(h, train=True, key=other))
    np.testing.assert_array_equal(head(h, train=False, key=key), head(h, train=False, key=other))
    # Block i keeps a unit with probability 1 − rate, drawn with the key folded with i, and rescales it.
    manual = h
    for i, layer in enumerate(head.hidden):
        manual = jax.nn.leaky_relu(layer(manual), 0.01)
        manual = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, i), 0.5, manual.shape), manual / 0.5, 0.0)
    np.testing.assert_array_equal(trained, head.logits(manual))


def test_the_objective_names_every_logged_loss_term():
    from mixvae.metrics.keys import LOSS_TERMS as logged
    assert sorted(losses.LOSS_TERMS) == sorted(logged)
    groups = (losses.IMAGE_TERMS, losses.LABELED_TERMS, losses.STEP_TERMS)
    assert sum(len(g) for g in groups) == len(set().union(*groups)) == len(losses.LOSS_TERMS)
