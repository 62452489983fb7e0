"""Forward shapes, loss-term wiring, decoder conditioning at initialisation, the weights round trip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mixvae.config import Config
from mixvae.model import (MixVAE, RouteCtx, blended_sigma, compute_terms, enabled_terms, load_weights,
                          predict_arrays, save_weights, tau)
from mixvae.model.networks import Conditioning

K, C, D, B = 4, 3, 2, 5
TINY = {"hidden_dims": [16], "conv_channels": [4, 8], "num_components": K, "num_classes": C, "latent_dim": D}

# (id, image shape, model overrides, num_labeled)
CASES = [
    ("dense-8x8-mixture-shared-cin-bce", (8, 8, 1), {}, 0),
    ("conv-28x28-mixture-film-mse-gumbel-st-top2", (28, 28, 1),
     {"encoder_type": "conv", "decoder_type": "conv", "decoder_conditioning": "film", "reconstruction_loss": "mse",
      "use_gumbel_softmax": True, "top_m_gating": 2, "c_regularizer": "both"}, 0),
    ("conv-dense-10x12-decentralized-concat-hetero-pixel-head", (10, 12, 1),
     {"encoder_type": "conv", "latent_layout": "decentralized", "decoder_conditioning": "concat",
      "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "c_regularizer": "logit_mog",
      "learnable_pi": True, "dirichlet_alpha": 2.0, "l1_weight": 1e-4}, 12),
    ("dense-conv-10x12-geometric-circle-none-hetero-image-head", (10, 12, 2),
     {"decoder_type": "conv", "prior_type": "geometric_mog", "decoder_conditioning": "none",
      "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "sigma_granularity": "image",
      "component_diversity_weight": -0.1}, 12),
    ("conv-8x8-geometric-grid-decentralized-cin-hetero-pixel-tau-soft-gumbel", (8, 8, 1),
     {"encoder_type": "conv", "decoder_type": "conv", "prior_type": "geometric_mog", "geometric_arrangement": "grid",
      "latent_layout": "decentralized", "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True,
      "use_gumbel_softmax": True, "use_straight_through_gumbel": False, "top_m_gating": 3,
      "use_tau_classifier": True}, 12),
    ("dense-8x8-decentralized-film-hetero-image-top1", (8, 8, 1),
     {"latent_layout": "decentralized", "decoder_conditioning": "film", "reconstruction_loss": "mse",
      "use_heteroscedastic_decoder": True, "sigma_granularity": "image", "use_gumbel_softmax": True,
      "top_m_gating": 1}, 0),
    ("dense-8x8-vamp-tau-bce", (8, 8, 1),
     {"prior_type": "vamp", "decoder_conditioning": "none", "use_tau_classifier": True, "vamp_num_samples_kl": 2,
      "component_diversity_weight": -0.5}, 12),
    ("conv-8x8-vamp-hetero-image", (8, 8, 1),
     {"prior_type": "vamp", "encoder_type": "conv", "decoder_type": "conv", "decoder_conditioning": "none",
      "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "sigma_granularity": "image"}, 0),
    ("dense-10x12-standard-mse-head", (10, 12, 3),
     {"prior_type": "standard", "decoder_conditioning": "none", "reconstruction_loss": "mse", "l1_weight": 1e-3}, 12),
    ("conv-8x8-standard-hetero-pixel-no-kl", (8, 8, 1),
     {"prior_type": "standard", "encoder_type": "conv", "decoder_type": "conv", "decoder_conditioning": "none",
      "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "kl_weight": 0.0}, 0),
]


def make_cfg(model: dict, num_labeled: int = 0) -> Config:
    return Config.model_validate({"model": {**TINY, **model}, "data": {"num_labeled": num_labeled}})


def batch(image_shape, seed=0):
    x = jax.random.uniform(jax.random.PRNGKey(seed), (B, *image_shape))
    labels = jnp.asarray([0, -1, 2, 1, 0], jnp.int32)
    valid = jnp.asarray([1, 1, 1, 1, 0], jnp.float32)  # the last slot is padding
    return x, labels, valid


def run_both_modes(cfg, model, x, labels, valid, tau_counts, ctx):
    """One compiled function: train- and eval-mode forward passes and their loss terms."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x, labels, valid, tau_counts, ctx, key):
        model = nnx.merge(graphdef, state)
        out = {}
        for mode, train in (("train", True), ("eval", False)):
            fwd = model(x, ctx, train=train, key=key)
            out[mode] = (fwd, compute_terms(cfg, model, fwd, x, labels, valid, tau_counts), blended_sigma(fwd))
        return out

    return run(state, x, labels, valid, tau_counts, ctx, jax.random.PRNGKey(7))


def assert_forward_shapes(cfg, fwd, image_shape, train):
    m = cfg.model
    decoded = m.top_m_gating if 0 < m.top_m_gating < K else K
    latent = (B, K, D) if m.latent_layout == "decentralized" else (B, D)
    for name in ("z_mean", "z_logvar", "z"):
        assert getattr(fwd, name).shape == latent, name
    assert np.all(np.abs(np.asarray(fwd.z_logvar)) < 10.0)
    if not train:
        np.testing.assert_array_equal(fwd.z, fwd.z_mean)
    assert fwd.recon.shape == (B, *image_shape)
    assert fwd.kl_z.shape == (B,)
    if m.is_component_decoding:
        for name in ("logits", "responsibilities", "routing"):
            assert getattr(fwd, name).shape == (B, K), name
        assert fwd.decoded_index.shape == (B, decoded) and fwd.decoded_index.dtype == jnp.int32
        assert fwd.decoded_weight.shape == (B, decoded)
        np.testing.assert_allclose(np.asarray(fwd.decoded_weight).sum(-1), 1.0, rtol=1e-5)
        assert fwd.out.shape == (B, decoded, *image_shape)
    else:
        for name in ("logits", "routing", "decoded_index", "decoded_weight", "soft_sample"):
            assert getattr(fwd, name) is None, name
        assert fwd.out.shape == (B, *image_shape)
    if m.is_mixture_based:
        assert fwd.responsibilities.shape == (B, K)
        np.testing.assert_allclose(np.asarray(fwd.responsibilities).sum(-1), 1.0, rtol=1e-5)
    else:
        assert fwd.responsibilities is None
    gumbel_sample = train and m.use_gumbel_softmax
    assert (fwd.soft_sample is not None) == gumbel_sample
    if gumbel_sample:
        assert fwd.soft_sample.shape == (B, K)
    if m.use_heteroscedastic_decoder:
        expected = fwd.out.shape if m.sigma_granularity == "pixel" else fwd.out.shape[:-3]
        assert fwd.sigma.shape == expected
        sigma = np.asarray(fwd.sigma)
        assert np.all((sigma >= m.sigma_min) & (sigma <= m.sigma_max))
    else:
        assert fwd.sigma is None
    if m.latent_layout == "decentralized":
        assert fwd.kl_per_component.shape == (B, K)
        # the mixture ELBO's latent KL: each image pays Σ_k r_k KL_k
        weighted = (np.asarray(fwd.responsibilities) * np.asarray(fwd.kl_per_component)).sum(-1)
        np.testing.assert_allclose(weighted, fwd.kl_z, rtol=1e-5)
    else:
        assert fwd.kl_per_component is None
    if m.head_trained(cfg.data.num_labeled):
        assert fwd.class_logits.shape == (B, C)
    else:
        assert fwd.class_logits is None
    for leaf in jax.tree_util.tree_leaves(fwd):
        assert np.all(np.isfinite(np.asarray(leaf)))


@pytest.mark.parametrize("case_id, image_shape, model, num_labeled", CASES, ids=[c[0] for c in CASES])
def test_forward_shapes_and_terms(case_id, image_shape, model, num_labeled):
    cfg = make_cfg(model, num_labeled)
    net = MixVAE(cfg, image_shape, rngs=nnx.Rngs(0))
    x, labels, valid = batch(image_shape)
    tau_counts = tau.init_counts(K, C, 1.0) + jnp.arange(K * C, dtype=jnp.float32).reshape(K, C) \
        if cfg.model.use_tau_classifier else None
    out = run_both_modes(cfg, net, x, labels, valid, tau_counts, RouteCtx.default(cfg))

    enabled = {name for name, reason in enabled_terms(cfg, num_labeled).items() if reason is None}
    for mode, (fwd, terms, sigma_hat) in out.items():
        assert_forward_shapes(cfg, fwd, image_shape, train=mode == "train")
        assert set(terms.image) | set(terms.labeled) | set(terms.step) == enabled
        assert set(terms.step) <= {"loss.dirichlet", "loss.diversity", "loss.l1"}
        for name, value in terms.image.items():
            assert value.shape == (B,) and np.all(np.isfinite(value)), name
        for name, value in terms.step.items():
            assert value.shape == () and np.isfinite(value), name
        if "loss.classifier" in enabled:
            ce = np.asarray(terms.labeled["loss.classifier"])
            assert ce.shape == (B,) and np.all(np.isfinite(ce))
            assert ce[1] == 0.0 and ce[4] == 0.0  # unlabeled and padded slots are exactly 0
            assert np.all(ce[[0, 2, 3]] > 0.0)
        if cfg.model.use_heteroscedastic_decoder:
            per_image = cfg.model.sigma_granularity == "image"
            assert sigma_hat.shape == ((B,) if per_image else (B, *image_shape))
            assert np.all(np.isfinite(sigma_hat)) and np.all(np.asarray(sigma_hat) > 0)
        else:
            assert sigma_hat is None


def test_enabled_terms_names_every_loss_term_with_reasons():
    cfg = make_cfg({"c_regularizer": "logit_mog"})
    terms = enabled_terms(cfg, 0)
    assert set(terms) == {"loss.recon", "loss.kl_z", "loss.kl_c", "loss.kl_c_logit_mog", "loss.dirichlet",
                          "loss.diversity", "loss.usage_balance", "loss.cluster_init", "loss.neighbour",
                          "loss.classifier", "loss.l1"}
    assert terms["loss.usage_balance"] == "model.usage_balance_weight is 0"
    assert terms["loss.neighbour"] == "model.neighbour_weight is 0"
    assert terms["loss.cluster_init"] == "model.cluster_init is 'none'"
    assert terms["loss.recon"] is None and terms["loss.kl_c_logit_mog"] is None
    assert terms["loss.kl_c"] == "model.c_regularizer is 'logit_mog'"
    assert terms["loss.classifier"] == "data.num_labeled is 0"
    assert terms["loss.dirichlet"] == "model.dirichlet_alpha is null"


def test_recon_blends_probabilities_for_bernoulli_outputs():
    cfg = make_cfg({})
    net = MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(1))
    x, _, _ = batch((8, 8, 1))
    fwd = net(x, RouteCtx.default(cfg), train=False, key=jax.random.PRNGKey(0))
    expected = np.einsum("bm,bmhwc->bhwc", fwd.decoded_weight, jax.nn.sigmoid(fwd.out))
    np.testing.assert_allclose(fwd.recon, expected, rtol=1e-5, atol=1e-6)
    assert np.all((np.asarray(fwd.recon) >= 0) & (np.asarray(fwd.recon) <= 1))


def test_inactive_components_get_zero_weight_and_gradients_stay_finite():
    cfg = make_cfg({"latent_layout": "decentralized", "c_regularizer": "both", "use_gumbel_softmax": True,
                    "top_m_gating": 3, "learnable_pi": True, "dirichlet_alpha": 3.0})
    net = MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    x, labels, valid = batch((8, 8, 1))
    ctx = RouteCtx.default(cfg).replace(active_mask=jnp.asarray([1.0, 1.0, 0.0, 0.0]),
                                        kick_bias=jnp.asarray([0.0, 3.0, 0.0, 0.0]))

    @jax.jit
    def loss_and_grad(state):
        def loss(state):
            model = nnx.merge(graphdef, state)
            fwd = model(x, ctx, train=True, key=jax.random.PRNGKey(3))
            terms = compute_terms(cfg, model, fwd, x, labels, valid, None)
            total = sum(jnp.sum(v * valid) for v in terms.image.values()) + sum(terms.step.values())
            return total, fwd
        return jax.value_and_grad(loss, has_aux=True)(state)

    (total, fwd), grads = loss_and_grad(state)
    assert np.isfinite(total)
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(np.asarray(leaf)))
    assert np.all(np.asarray(fwd.responsibilities)[:, 2:] == 0.0)
    assert np.all(np.asarray(fwd.routing)[:, 2:] == 0.0)
    # Spare top-M slots decode inactive components with weight exactly 0.
    index, weight = np.asarray(fwd.decoded_index), np.asarray(fwd.decoded_weight)
    assert np.all(weight[index >= 2] == 0.0)
    assert np.all(np.asarray(grads["pi_logits"][...])[2:] == 0.0)


def _features(shape, seed):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize("shape", [(3, 16), (3, 4, 5, 16)])
def test_film_is_identity_and_cin_is_plain_normalisation_at_init(shape):
    h, e = _features(shape, 0), _features((3, 6), 1)
    film = Conditioning("film", 16, 6, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(film(h, e), h)
    cin = Conditioning("cin", 16, 6, rngs=nnx.Rngs(0))
    axes = (1, 2) if len(shape) == 4 else (-1,)
    normed = (h - h.mean(axes, keepdims=True)) / jnp.sqrt(h.var(axes, keepdims=True) + 1e-5)
    np.testing.assert_allclose(cin(h, e), normed, rtol=1e-5, atol=1e-6)
    concat = Conditioning("concat", 16, 6, rngs=nnx.Rngs(0))
    assert concat(h, e).shape == (*shape[:-1], 32)


def test_parameter_names_the_optimiser_relies_on():
    cfg = make_cfg({"encoder_type": "conv", "decoder_type": "conv", "decoder_conditioning": "film"}, 12)
    state = nnx.state(MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0)), nnx.Param)
    names = {path[-1] for path, _ in nnx.to_flat_state(state)}
    assert names == {"kernel", "bias", "embeddings", "pi_logits"}
    assert state["embeddings"][...].shape == (K, D) and np.all(state["pi_logits"][...] == 0)
    vamp = make_cfg({"prior_type": "vamp", "decoder_conditioning": "none"})
    vstate = nnx.state(MixVAE(vamp, (8, 8, 1), rngs=nnx.Rngs(0)), nnx.Param)
    assert vstate["pseudo_inputs"][...].shape == (K, 8, 8, 1)
    assert {path[-1] for path, _ in nnx.to_flat_state(vstate)} == {"kernel", "bias", "pseudo_inputs"}


def test_fixed_pi_gets_no_gradient():
    cfg = make_cfg({"learnable_pi": False})
    net = MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    x, labels, valid = batch((8, 8, 1))

    def kl_c(state):
        model = nnx.merge(graphdef, state)
        fwd = model(x, RouteCtx.default(cfg), train=False, key=jax.random.PRNGKey(0))
        return jnp.sum(compute_terms(cfg, model, fwd, x, labels, valid, None).image["loss.kl_c"])

    grads = jax.jit(jax.grad(kl_c))(state)
    assert np.all(np.asarray(grads["pi_logits"][...]) == 0.0)
    assert np.any(np.asarray(grads["logits_head"]["kernel"][...]) != 0.0)


ROUND_TRIP = {
    "vamp-tau": ((8, 8, 1), {"prior_type": "vamp", "decoder_conditioning": "none", "use_tau_classifier": True}, 12),
    "conv-decentralized-head-hetero": ((10, 12, 1),
                                      {"encoder_type": "conv", "decoder_type": "conv",
                                       "latent_layout": "decentralized", "reconstruction_loss": "mse",
                                       "use_heteroscedastic_decoder": True, "use_gumbel_softmax": True,
                                       "top_m_gating": 2}, 12),
    "standard": ((8, 8, 1), {"prior_type": "standard", "decoder_conditioning": "none"}, 0),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_weights_round_trip_is_bit_identical(name, tmp_path):
    image_shape, model, num_labeled = ROUND_TRIP[name]
    cfg = make_cfg(model, num_labeled)
    net = MixVAE(cfg, image_shape, rngs=nnx.Rngs(11))
    if cfg.model.prior_type == "vamp":
        net.set_pseudo_inputs(np.random.default_rng(0).uniform(size=(K, *image_shape)).astype(np.float32))
    tau_counts = (tau.init_counts(K, C, 1.0) + jnp.arange(K * C, dtype=jnp.float32).reshape(K, C)
                  if cfg.model.use_tau_classifier else None)
    active_mask = jnp.asarray([1.0, 1.0, 1.0, 0.0])
    path = save_weights(tmp_path / "weights.msgpack", net, tau_counts, active_mask)
    loaded, loaded_tau, loaded_mask = load_weights(path, cfg, image_shape)
    np.testing.assert_array_equal(loaded_mask, active_mask)
    if tau_counts is None:
        assert loaded_tau is None
    else:
        np.testing.assert_array_equal(loaded_tau, tau_counts)

    x, _, _ = batch(image_shape, seed=3)
    outputs = []
    for model, counts, mask in ((net, tau_counts, active_mask), (loaded, loaded_tau, loaded_mask)):
        graphdef, state = nnx.split(model)
        predict = jax.jit(lambda state, x, mask, counts: predict_arrays(nnx.merge(graphdef, state), x, mask,
                                                                         counts, cfg))
        outputs.append(jax.device_get(predict(state, x, mask, counts)))
    original, restored = outputs
    assert set(original) == set(restored)
    for key in original:
        np.testing.assert_array_equal(original[key], restored[key], err_msg=key)

    expected_keys = {"reconstruction_error"}
    if cfg.model.is_mixture_based:
        expected_keys |= {"component", "responsibilities"}
        assert np.all(np.asarray(original["responsibilities"])[:, 3] == 0.0)  # closed component
    if cfg.model.use_tau_classifier:
        expected_keys |= {"predicted_label", "certainty", "ood_score"}
    elif cfg.model.head_trained(num_labeled):
        expected_keys |= {"predicted_label", "certainty"}
    assert set(original) == expected_keys
    for values in original.values():
        assert values.shape[0] == B and np.all(np.isfinite(values))


def test_load_weights_rejects_a_mismatched_config(tmp_path):
    cfg = make_cfg({})
    path = save_weights(tmp_path / "w.msgpack", MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(0)), None, jnp.ones(K))
    other = make_cfg({"hidden_dims": [16, 8]})
    with pytest.raises(ValueError, match="do not fit"):
        load_weights(path, other, (8, 8, 1))


def test_serving_modules_do_not_import_heavy_packages():
    code = ("import sys, mixvae.model.weights, mixvae.model.inference, mixvae.model; "
            "bad = [m for m in ('click', 'matplotlib', 'seaborn', 'sklearn', 'mlflow') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    repo_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("layout", ["shared", "decentralized"])
def test_every_component_decoded_blends_to_the_recon(layout):
    cfg = make_cfg({"latent_layout": layout, "decoder_conditioning": "concat"})
    net = MixVAE(cfg, (8, 8, 1), rngs=nnx.Rngs(2))
    graphdef, state = nnx.split(net)
    x, _, _ = batch((8, 8, 1))

    @jax.jit
    def run(state, ctx):
        model = nnx.merge(graphdef, state)
        fwd = model(x, ctx, train=False, key=jax.random.PRNGKey(0))
        return model.decode_every_component(fwd.z_mean), fwd

    ctx = RouteCtx.default(cfg)
    (means, sigma), fwd = run(state, ctx)
    assert means.shape == (B, K, 8, 8, 1) and sigma is None
    np.testing.assert_allclose(np.einsum("bk,bkhwc->bhwc", fwd.routing, means), fwd.recon, rtol=1e-5, atol=1e-6)
    # Routing state is data, not structure: new mask, bias, temperature and switch reuse the compiled function.
    run(state, ctx.replace(active_mask=jnp.asarray([1.0, 0.0, 1.0, 0.0]), temperature=jnp.float32(3.0),
                           kick_bias=jnp.ones(K), straight_through=jnp.float32(0.0)))
    assert run._cache_size() == 1


@pytest.mark.parametrize("decoder", ["conv", "dense"])
def test_bfloat16_decoding_keeps_float32_weights_outputs_and_gradients(decoder):
    """training.decode_dtype bfloat16: the decoder computes from bfloat16 copies of the float32 weights;
    its outputs come back in float32, equal to the float32 decoder's to bfloat16's precision (and not
    bit-equal: bfloat16 was used), and the gradient reaches every float32 decoder weight."""
    model = {**TINY, "decoder_type": decoder, "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True,
             "sigma_granularity": "image"}
    cfg32 = Config.model_validate({"model": model})
    cfg16 = Config.model_validate({"model": model, "training": {"decode_dtype": "bfloat16"}})
    graphdef32, params = nnx.split(MixVAE(cfg32, (8, 8, 1), rngs=nnx.Rngs(3)))
    graphdef16, _ = nnx.split(MixVAE(cfg16, (8, 8, 1), rngs=nnx.Rngs(3)))
    z = jax.random.normal(jax.random.PRNGKey(1), (6, D))
    e = jax.random.normal(jax.random.PRNGKey(2), (6, cfg32.model.component_embedding_dim))
    # jitted whole: op-by-op, every conv primitive of both precisions and their gradients compiled apart
    out32, sigma32 = jax.jit(lambda p: nnx.merge(graphdef32, p).decode(z, e)[:2])(params)
    out16, sigma16 = jax.jit(lambda p: nnx.merge(graphdef16, p).decode(z, e)[:2])(params)
    assert out16.dtype == sigma16.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out16), np.asarray(out32), rtol=0.05, atol=0.05)
    np.testing.assert_allclose(np.asarray(sigma16), np.asarray(sigma32), rtol=0.02)
    assert not np.array_equal(np.asarray(out16), np.asarray(out32))

    def loss(p):
        out, sigma, _ = nnx.merge(graphdef16, p).decode(z, e)
        return jnp.sum(out ** 2) + jnp.sum(sigma)
    grads = nnx.to_pure_dict(jax.jit(jax.grad(loss))(params))
    for part in ("decoder", "output_head"):
        leaves = jax.tree_util.tree_leaves(grads[part])
        assert leaves and all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in leaves)
        assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


@pytest.mark.parametrize("shape,c_in,c_out", [((4, 7, 7, 8), 8, 4), ((3, 2, 3, 5), 5, 6), ((2, 1, 1, 3), 3, 2),
                                               ((2, 14, 14, 16), 16, 8)])
def test_sub_pixel_form_equals_the_transposed_convolution(shape, c_in, c_out):
    """The decoder's stride-2 upsampling is nnx.ConvTranspose computed a faster way: same values, and
    the same gradients with respect to the input, the kernel and the bias."""
    from mixvae.model.networks import transposed_conv
    layer = nnx.ConvTranspose(c_in, c_out, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(1))
    layer.bias[...] = jax.random.normal(jax.random.PRNGKey(3), (c_out,))
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    weights = jax.random.normal(jax.random.PRNGKey(4), (shape[0], 2 * shape[1], 2 * shape[2], c_out))
    graphdef, params = nnx.split(layer)

    def layer_itself(m, x):
        return m(x)

    # each form jitted whole (op by op, every primitive and its gradient would be compiled apart)
    def values_and_grads(form):
        def loss(params, x):
            return jnp.sum(weights * form(nnx.merge(graphdef, params), x))
        return jax.jit(lambda p, x: (form(nnx.merge(graphdef, p), x), jax.grad(loss, argnums=(0, 1))(p, x)))(params, x)

    expected, want = values_and_grads(layer_itself)
    got, have = values_and_grads(transposed_conv)
    assert got.shape == expected.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)
    pairs = [("kernel", have[0]["kernel"][...], want[0]["kernel"][...]),
             ("bias", have[0]["bias"][...], want[0]["bias"][...]), ("input", have[1], want[1])]
    for name, a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4, err_msg=name)


def test_decoder_forms_compute_the_same_map(monkeypatch):
    """The benchmark switch between the sub-pixel and XLA's own transposed convolution changes speed only:
    the conv decoder maps the same latents to the same feature maps."""
    from mixvae.model import networks
    backbone = networks.DecoderBackbone((28, 28, 1), "conv", 2, (16, 8), (4, 8, 16), rngs=nnx.Rngs(5))
    z = jax.random.normal(jax.random.PRNGKey(6), (3, 2))
    graphdef, state = nnx.split(backbone)

    def decode(state, z):  # jitted whole (op by op, every primitive would be compiled apart)
        return nnx.merge(graphdef, state)(z)
    shipped = jax.jit(decode)(state, z)
    monkeypatch.setattr(networks, "TRANSPOSED_CONV_FORM", "native")
    native = jax.jit(decode)(state, z)  # a new jitted function: traced again with the switch flipped
    assert shipped.shape == native.shape == (3, 28, 28, 4)
    np.testing.assert_allclose(np.asarray(shipped), np.asarray(native), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "transposed"])
def test_stride_one_layers_as_matmuls_equal_the_layers(kind):
    """Inside the rematerialised decode loop the stride-1 3×3 layers run as one matmul: same values."""
    from mixvae.model.networks import conv3x3
    make = nnx.Conv if kind == "conv" else nnx.ConvTranspose
    layer = make(6, 5, (3, 3), strides=1, padding="SAME", rngs=nnx.Rngs(2))
    layer.bias[...] = jax.random.normal(jax.random.PRNGKey(5), (5,))
    x = jax.random.normal(jax.random.PRNGKey(6), (3, 7, 6, 6))
    np.testing.assert_allclose(np.asarray(conv3x3(layer, x)), np.asarray(layer(x)), rtol=1e-5, atol=1e-5)
