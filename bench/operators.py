"""The conv decoder's layers, each form side by side in one process: what the rewrites buy.

    python bench/operators.py [--items 2560] [--repeats 3] [--only conv|likelihood] [--gpu]

The heavy setting decodes 2 560 (image, component) items per training step (batch 128 × K = 20)
through the decoder [128 → 128 @ 7×7, stride 1] → [128 → 64, 7×7 → 14×14] → [64 → 32, 14×14 → 28×28].
For each stride-2 layer this times, forward and gradient (with respect to the input and the kernel):

- `conv_transpose`: `nnx.ConvTranspose` itself (XLA's input-dilated convolution);
- `zero_insertion`: zeros inserted between the pixels, then a stride-1 3×3 convolution (the form
  the decoder used before; kept here as the reference);
- `sub_pixel`: `mixvae.model.networks.transposed_conv`, one matmul and the four output phases.

For the stride-1 layer: XLA's convolution against `networks.conv3x3` (one matmul), each on its own
and inside a `lax.map` over 20 chunks (the rematerialised decode's loop), where XLA:CPU's
convolutions are slow. Every form is checked against the layer first (max abs difference printed).

Last, the dense decoder's output stage with σ per pixel: the likelihood (x − μ)²/(2σ²) + log σ as it
was written before, against `mixvae.model.losses.gaussian_nll_pixel`'s ½((x − μ)/σ)² + log σ, with
the two heads' matmuls and the gradient that runs through them; and the Bernoulli likelihood summed
over (H, W, Ch) as before against `bernoulli_nll`'s sum over one flat axis of pixels; and the output
stage with one σ per image from the mean images against the squared-error expansion
(`losses.squared_error_from_head`), with and without its own gradient.
Ratios are the reference form's time over the new form's, measured in the same process.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()


def zero_insertion(layer, h):
    """The previous decoder form of a 3×3 stride-2 transposed convolution (SAME)."""
    import jax
    import jax.numpy as jnp
    n, height, width, c = h.shape
    up = jnp.stack([h, jnp.zeros_like(h)], axis=2).reshape(n, 2 * height, width, c)
    up = jnp.stack([up, jnp.zeros_like(up)], axis=3).reshape(n, 2 * height, 2 * width, c)
    out = jax.lax.conv_general_dilated(up, layer.kernel[...], (1, 1), ((2, 0), (2, 0)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + layer.bias[...]


def nll_two_divisions(mean, sigma, x):
    """The per-pixel Gaussian likelihood as written before: (x − μ)² / (2σ²) + log σ."""
    import jax.numpy as jnp
    from mixvae.model.losses import _LOG_2PI
    per_pixel = jnp.square(x - mean) / (2.0 * jnp.square(sigma)) + jnp.log(sigma)
    return jnp.sum(per_pixel, axis=(-3, -2, -1)) + 0.5 * math.prod(mean.shape[-3:]) * _LOG_2PI


def likelihood_forms(items: int, repeats: int) -> dict:
    """The dense decoder's output stage with σ per pixel: features h [items, 256] → the mean and σ
    heads (256 → 784 each) → σ = 0.01 + 0.99·sigmoid(·) → the likelihood against the batch's images,
    value and gradient with respect to h and both kernels, for each way of writing the likelihood.
    → compare's {form: (relative difference of the value, seconds)}."""
    import jax
    import jax.numpy as jnp
    from mixvae.model.losses import gaussian_nll_pixel
    batch = math.gcd(items, 128)
    k = jax.random.split(jax.random.PRNGKey(1), 4)
    h = jax.random.normal(k[0], (items, 256))
    w_mean, w_sigma = (0.05 * jax.random.normal(key, (256, 784)) for key in k[1:3])
    x = jax.random.uniform(k[3], (batch, 1, 28, 28, 1))

    def loss(nll):
        def value(h, w_mean, w_sigma):
            shape = (batch, items // batch, 28, 28, 1)
            sigma = 0.01 + 0.99 * jax.nn.sigmoid((h @ w_sigma).reshape(shape))
            return jnp.sum(nll((h @ w_mean).reshape(shape), sigma, x))
        return jax.jit(jax.value_and_grad(value, argnums=(0, 1, 2)))

    return compare({name: (loss(nll), (h, w_mean, w_sigma)) for name, nll in
                    (("two_divisions", nll_two_divisions), ("one_division", gaussian_nll_pixel))}, repeats)

def nll_bernoulli_axes(logits, x):
    """The Bernoulli likelihood as written before: summed over (H, W, Ch)."""
    import jax
    import jax.numpy as jnp
    return jnp.sum(jax.nn.softplus(logits) - x * logits, axis=(-3, -2, -1))


def bernoulli_forms(items: int, repeats: int) -> dict:
    """The dense decoder's output stage with a Bernoulli likelihood: h [items, 256] → the logits head
    (256 → 784) → the likelihood, value and gradient with respect to h and the kernel, summed over
    (H, W, Ch) as before and over one flat pixel axis (`mixvae.model.losses.bernoulli_nll`).
    → compare's {form: (relative difference of the value, seconds)}."""
    import jax
    import jax.numpy as jnp
    from mixvae.model.losses import bernoulli_nll
    batch = math.gcd(items, 128)
    k = jax.random.split(jax.random.PRNGKey(2), 3)
    h, w = jax.random.normal(k[0], (items, 256)), 0.05 * jax.random.normal(k[1], (256, 784))
    x = jax.random.uniform(k[2], (batch, 1, 28, 28, 1))
    forms = {}
    for name, nll in (("sum_over_h_w_ch", nll_bernoulli_axes), ("sum_over_pixels", bernoulli_nll)):
        forms[name] = (jax.jit(jax.value_and_grad(
            lambda h, w, nll=nll: jnp.sum(nll((h @ w).reshape(batch, items // batch, 28, 28, 1), x)),
            argnums=(0, 1))), (h, w))
    return compare(forms, repeats)


def squared_error_forms(items: int, repeats: int) -> dict:
    """The dense decoder's output stage with one σ per image (the reference's setting): features
    h′ [items, 256] → σ = 0.01 + 0.99·sigmoid(Dense(1)) and the mean head (256 → 784) → the Gaussian
    likelihood against the batch's images, value and gradient with respect to h′ and the kernel:
    from the mean images as before; from h′ by the squared-error expansion with automatic
    differentiation; and as mixvae computes it (`losses.squared_error_from_head`, whose quadratic form
    has its own gradient). → compare's {form: (relative difference of the value, seconds)}."""
    import jax
    import jax.numpy as jnp
    from mixvae.model.losses import (LinearHead, gaussian_nll_from_squared_error, gaussian_nll_image,
                                     squared_error_from_head)
    batch = math.gcd(items, 128)
    k = jax.random.split(jax.random.PRNGKey(3), 5)
    h = jax.random.normal(k[0], (batch, items // batch, 256))
    w, w_sigma = 0.05 * jax.random.normal(k[1], (256, 784)), 0.05 * jax.random.normal(k[2], (256,))
    b = 0.1 * jax.random.normal(k[3], (784,))
    x = jax.random.uniform(k[4], (batch, 28, 28, 1))

    def sigma(h):
        return 0.01 + 0.99 * jax.nn.sigmoid(h @ w_sigma)

    def from_means(h, w):
        means = (h @ w + b).reshape(*h.shape[:2], 28, 28, 1)
        return jnp.sum(gaussian_nll_image(means, sigma(h), x[:, None]))

    def autodiff_expansion(h, w):
        centred = x.reshape(batch, -1) - b
        sq_error = (jnp.sum(jnp.square(centred), -1)[:, None] - 2.0 * jnp.einsum("bmf,bf->bm", h, centred @ w.T)
                    + jnp.sum((h @ (w @ w.T)) * h, axis=-1))
        return jnp.sum(gaussian_nll_from_squared_error(sq_error, sigma(h), 784))

    def expansion(h, w):
        return jnp.sum(gaussian_nll_from_squared_error(squared_error_from_head(LinearHead(h, w, b), x), sigma(h), 784))

    return compare({name: (jax.jit(jax.value_and_grad(fn, argnums=(0, 1))), (h, w)) for name, fn in
                    (("from_means", from_means), ("expansion_autodiff", autodiff_expansion),
                     ("expansion", expansion))}, repeats)


def compare(forms: dict, repeats: int) -> dict:
    """{form: (jitted value-and-gradient function, its arguments)} → {form: (relative difference of
    the value to the first form's, best time in seconds)}."""
    out, first = {}, None
    for name, (fn, args) in forms.items():
        value = float(fn(*args)[0])
        first = value if first is None else first
        out[name] = (abs(value - first) / abs(first), best_of(fn, args, repeats * 3))
    return out

def best_of(fn, args, repeats: int) -> float:
    import jax
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return min(times)


def timed_forms(layer, h, forms: dict, repeats: int, chunks: int = 0) -> dict:
    """→ {form: (max |difference| to the first form, forward s, gradient s)}; with `chunks`, each
    form runs inside a lax.map over that many chunks of the items."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    graphdef, params = nnx.split(layer)

    def apply(form, params, h):
        layer = nnx.merge(graphdef, params)
        if not chunks:
            return form(layer, h)
        parts = jax.lax.map(lambda part: form(layer, part), h.reshape(chunks, -1, *h.shape[1:]))
        return parts.reshape(-1, *parts.shape[2:])

    out, reference = {}, None
    for name, form in forms.items():
        forward = jax.jit(lambda p, h, form=form: apply(form, p, h))
        grad = jax.jit(jax.grad(lambda p, h, form=form: jnp.sum(jnp.square(apply(form, p, h))), argnums=(0, 1)))
        value = forward(params, h)
        reference = value if reference is None else reference
        diff = float(jnp.max(jnp.abs(value - reference)))
        out[name] = (diff, best_of(forward, (params, h), repeats), best_of(grad, (params, h), repeats))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2560, help="decoded items per step (batch × K)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--only", choices=("conv", "likelihood"), help="only the conv layers, or only the "
                        "likelihoods' output stages")
    args = parser.parse_args()
    common.header("operators")

    import jax
    from flax import nnx

    from mixvae.model.networks import conv3x3, transposed_conv
    results = common.Results("operators")
    key = jax.random.PRNGKey(0)
    layers = [(128, 64, 7, 2), (64, 32, 14, 2), (128, 128, 7, 1)] if args.only != "likelihood" else []
    for c_in, c_out, size, stride in layers:
        layer = nnx.ConvTranspose(c_in, c_out, (3, 3), strides=stride, padding="SAME", rngs=nnx.Rngs(0))
        h = jax.random.normal(key, (args.items, size, size, c_in))
        what = f"{args.items} items, {c_in}→{c_out}, {size}×{size}, stride {stride}"
        if stride == 2:
            cases = [("", {"conv_transpose": lambda layer, h: layer(h), "zero_insertion": zero_insertion,
                           "sub_pixel": transposed_conv}, 0)]
        else:
            forms = {"xla_conv": lambda layer, h: layer(h), "matmul": conv3x3}
            loop = math.gcd(args.items, 20)
            cases = [("", forms, 0), (f", inside a loop over {loop} chunks", forms, loop)]
        for suffix, forms, chunks in cases:
            timings = timed_forms(layer, h, forms, args.repeats, chunks)
            for name, (diff, forward, grad) in timings.items():
                config = f"{what}{suffix}: {name}"
                results.emit(config, "forward", forward * 1e3, "ms", note=f"max |difference| {diff:.1e}")
                results.emit(config, "gradient", grad * 1e3, "ms")
            names = list(timings)
            new = names[-1]
            for old in names[:-1]:
                results.emit(f"{what}{suffix}", f"gradient speed-up: {old} ÷ {new}",
                             timings[old][2] / timings[new][2], "×")
    if args.only == "conv":
        results.finish()
        return
    for what, forms in ((f"{args.items} items, dense output stage with σ per pixel (two 256 → 784 heads, "
                         "sigmoid σ, likelihood)", likelihood_forms(args.items, args.repeats)),
                        (f"{args.items} items, dense output stage with a Bernoulli likelihood (256 → 784 logits)",
                         bernoulli_forms(args.items, args.repeats)),
                        (f"{args.items} items, dense output stage with one σ per image (256 → 784 means, "
                         "Gaussian likelihood)", squared_error_forms(args.items, args.repeats))):
        for name, (diff, seconds) in forms.items():
            results.emit(f"{what}: {name}", "value_and_gradient", seconds * 1e3, "ms",
                         note=f"relative difference of the value {diff:.1e}")
        *olds, new = forms  # the forms as written before, then mixvae's
        for old in olds:
            results.emit(what, f"speed-up: {old} ÷ {new}", forms[old][1] / forms[new][1], "×")
    results.finish()


if __name__ == "__main__":
    main()
