"""Encoder, decoder backbone, decoder conditioning and output heads.

Every trainable weight of a Dense or Conv layer is called ``kernel`` (nnx.Linear, nnx.Conv and
nnx.ConvTranspose name them so); the optimiser's decay mask and ``loss.l1`` rely on that name.
Nothing here holds random state: dropout takes an explicit key.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# Slopes of leaky_relu: dense blocks use 0.01, conv stacks 0.2.
DENSE_SLOPE = 0.01
CONV_SLOPE = 0.2
# ε of the conditional instance normalisation.
NORM_EPS = 1e-5


def padded_size(size: int) -> int:
    """H' = 4⌈H/4⌉: the conv encoder pads to a multiple of 4 (two stride-2 layers)."""
    return 4 * math.ceil(size / 4)


def conv_strides(num_layers: int) -> tuple[int, ...]:
    """Stride 2 for the first two conv layers, 1 after."""
    return tuple(2 if i < 2 else 1 for i in range(num_layers))


def bound_logvar(raw: jax.Array) -> jax.Array:
    """Smooth bound of the log-variance to (−10, 10): 10·tanh(raw/10), so exp cannot overflow."""
    return 10.0 * jnp.tanh(raw / 10.0)


class DenseBlock(nnx.Module):
    """Dense(h) → leaky_relu for each width h."""

    def __init__(self, in_features: int, widths: tuple[int, ...], slope: float, *, rngs: nnx.Rngs):
        layers = []
        for width in widths:
            layers.append(nnx.Linear(in_features, width, rngs=rngs))
            in_features = width
        self.layers = nnx.List(layers)
        self.slope = slope
        self.out_features = in_features

    def __call__(self, h: jax.Array) -> jax.Array:
        for layer in self.layers:
            h = jax.nn.leaky_relu(layer(h), self.slope)
        return h


class Encoder(nnx.Module):
    """Image [B, H, W, Ch] → feature vector [B, F]."""

    def __init__(self, image_shape: tuple[int, int, int], encoder_type: str, hidden_dims: tuple[int, ...],
                 conv_channels: tuple[int, ...], *, rngs: nnx.Rngs):
        height, width, channels = image_shape
        self.image_shape = tuple(image_shape)
        self.encoder_type = encoder_type
        if encoder_type == "conv":
            self.padded_hw = (padded_size(height), padded_size(width))
            convs = []
            in_ch = channels
            for out_ch, stride in zip(conv_channels, conv_strides(len(conv_channels))):
                convs.append(nnx.Conv(in_ch, out_ch, (3, 3), strides=stride, padding="SAME", rngs=rngs))
                in_ch = out_ch
            self.convs = nnx.List(convs)
            flat = (self.padded_hw[0] // 4) * (self.padded_hw[1] // 4) * conv_channels[-1]
        elif encoder_type == "dense":
            self.padded_hw = (height, width)
            self.convs = nnx.List([])
            flat = height * width * channels
        else:
            raise ValueError(f"model.encoder_type must be 'dense' or 'conv' (got {encoder_type!r})")
        self.dense = DenseBlock(flat, tuple(hidden_dims), DENSE_SLOPE, rngs=rngs)
        self.out_features = self.dense.out_features

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.encoder_type == "conv":
            height, width, _ = self.image_shape
            pad_h, pad_w = self.padded_hw[0] - height, self.padded_hw[1] - width
            h = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))  # zeros at the bottom and right
            for conv in self.convs:
                h = jax.nn.leaky_relu(conv(h), CONV_SLOPE)
        else:
            h = x
        h = h.reshape(h.shape[0], -1)
        return self.dense(h)


class DecoderBackbone(nnx.Module):
    """Latent [N, D] → last feature map h: [N, F] (dense) or [N, H', W', F] (conv)."""

    def __init__(self, image_shape: tuple[int, int, int], decoder_type: str, latent_dim: int,
                 hidden_dims: tuple[int, ...], conv_channels: tuple[int, ...], *, rngs: nnx.Rngs):
        height, width, _ = image_shape
        self.decoder_type = decoder_type
        self.dense = DenseBlock(latent_dim, tuple(reversed(hidden_dims)), DENSE_SLOPE, rngs=rngs)
        if decoder_type == "conv":
            self.padded_hw = (padded_size(height), padded_size(width))
            self.seed_hw = (self.padded_hw[0] // 4, self.padded_hw[1] // 4)
            c_last = conv_channels[-1]
            self.seed_channels = c_last
            self.to_map = nnx.Linear(self.dense.out_features, self.seed_hw[0] * self.seed_hw[1] * c_last,
                                     rngs=rngs)
            # Mirror of the encoder: channels in reverse order, strides reversed (H'/4 → H'/2 → H').
            out_channels = tuple(reversed(conv_channels))
            strides = tuple(reversed(conv_strides(len(conv_channels))))
            deconvs = []
            in_ch = c_last
            for out_ch, stride in zip(out_channels, strides):
                deconvs.append(nnx.ConvTranspose(in_ch, out_ch, (3, 3), strides=stride, padding="SAME",
                                                 rngs=rngs))
                in_ch = out_ch
            self.deconvs = nnx.List(deconvs)
            self.out_features = conv_channels[0]
        elif decoder_type == "dense":
            self.to_map = None
            self.deconvs = nnx.List([])
            self.out_features = hidden_dims[0]
        else:
            raise ValueError(f"model.decoder_type must be 'dense' or 'conv' (got {decoder_type!r})")

    def __call__(self, z: jax.Array, as_matmuls: bool = False) -> jax.Array:
        """``as_matmuls``: stride-1 layers as ``conv3x3`` matmuls too (see ``conv3x3``)."""
        h = self.dense(z)
        if self.decoder_type == "conv":
            h = jax.nn.leaky_relu(self.to_map(h), CONV_SLOPE)
            h = h.reshape(h.shape[0], self.seed_hw[0], self.seed_hw[1], self.seed_channels)
            subpixel = as_matmuls or TRANSPOSED_CONV_FORM == "subpixel"
            for deconv in self.deconvs:
                h = jax.nn.leaky_relu(transposed_conv(deconv, h, as_matmuls) if subpixel else deconv(h), CONV_SLOPE)
        return h


# How the decoder computes its stride-2 transposed convolutions: "subpixel" (``transposed_conv``) or "native"
# (the layer itself: XLA's input-dilated convolution, cuDNN on a GPU). Both are the same operator (a test); the
# sub-pixel form measured faster on the CPU and on an H100 (docs/performance.md). Benchmarks switch it to compare.
TRANSPOSED_CONV_FORM = "subpixel"


def conv3x3(layer: nnx.Conv | nnx.ConvTranspose, h: jax.Array) -> jax.Array:
    """A 3×3 stride-1 SAME layer (``nnx.Conv``, or ``nnx.ConvTranspose``, which at stride 1 is the
    same correlation) as one matmul: the nine shifted copies of the zero-padded input side by side
    ([N·H·W, 9·C_in]) times the kernel ([9·C_in, C_out]). Equal to ``layer(h)`` up to float rounding
    (a test). XLA:CPU runs convolutions inside a loop several times slower than on their own, so the
    rematerialised decode (``training.decode_chunks``), which loops over chunks, uses this form.
    """
    n, height, width, c_in = h.shape
    padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    columns = jnp.concatenate([padded[:, i:i + height, j:j + width] for i in range(3) for j in range(3)], axis=-1)
    kernel = layer.kernel[...]
    out = columns.reshape(-1, 9 * c_in) @ kernel.reshape(9 * c_in, kernel.shape[-1])
    return out.reshape(n, height, width, kernel.shape[-1]) + layer.bias[...]


def transposed_conv(layer: nnx.ConvTranspose, h: jax.Array, as_matmuls: bool = False) -> jax.Array:
    """``layer(h)``, computed for stride 2 in sub-pixel form: one matmul, then each output phase sums
    the kernel taps that reach it.

    A 3×3 stride-2 transposed convolution (SAME) writes x[j]·K[t] into output pixel 2j + t − 1 along
    each axis. So every input pixel is multiplied once by all nine taps (a [N·H·W, C_in] × [C_in, 9·C_out]
    matmul, Y), and the four output phases (even/odd row × even/odd column) are sums of shifted slices
    of Y: out[2j, 2k] = Y₀₀[j−1, k−1] + Y₀₂[j−1, k] + Y₂₀[j, k−1] + Y₂₂[j, k], out[2j, 2k+1] =
    Y₀₁[j−1, k] + Y₂₁[j, k], out[2j+1, 2k] = Y₁₀[j, k−1] + Y₁₂[j, k], out[2j+1, 2k+1] = Y₁₁[j, k].
    It is the operator of ``nnx.ConvTranspose`` (equal up to float rounding, values and gradients: a
    test checks it) without the three quarters of zeros that dilating the input feeds the kernel, and
    its gradient is two matmuls instead of XLA:CPU's slow input-dilated convolution
    (docs/performance.md). Stride 1 runs the layer as it is, or ``conv3x3`` with ``as_matmuls``;
    other kernel sizes run the layer as it is.
    """
    strides = layer.strides if isinstance(layer.strides, (tuple, list)) else (layer.strides,) * 2
    if tuple(layer.kernel_size) != (3, 3) or tuple(strides) not in ((1, 1), (2, 2)):
        return layer(h)
    if tuple(strides) == (1, 1):
        return conv3x3(layer, h) if as_matmuls else layer(h)
    n, height, width, c_in = h.shape
    kernel = layer.kernel[...]                                   # [3, 3, C_in, C_out]
    c_out = kernel.shape[-1]
    taps = jnp.transpose(kernel, (2, 0, 1, 3)).reshape(c_in, 9 * c_out)
    y = (h.reshape(-1, c_in) @ taps).reshape(n, height, width, 3, 3, c_out)
    y = jnp.pad(y, ((0, 0), (1, 0), (1, 0), (0, 0), (0, 0), (0, 0)))  # y[:, j] is Y[j − 1]; Y[−1] = 0
    above, here = y[:, :-1], y[:, 1:]                             # input rows j − 1 and j
    even_even = above[:, :, :-1, 0, 0] + above[:, :, 1:, 0, 2] + here[:, :, :-1, 2, 0] + here[:, :, 1:, 2, 2]
    even_odd = above[:, :, 1:, 0, 1] + here[:, :, 1:, 2, 1]
    odd_even = here[:, :, :-1, 1, 0] + here[:, :, 1:, 1, 2]
    odd_odd = here[:, :, 1:, 1, 1]
    even_rows = jnp.stack([even_even, even_odd], axis=3)        # [N, H, W, 2, C_out]: columns interleaved
    odd_rows = jnp.stack([odd_even, odd_odd], axis=3)
    out = jnp.stack([even_rows, odd_rows], axis=2).reshape(n, 2 * height, 2 * width, c_out)
    return out + layer.bias[...]


def _standardise(h: jax.Array) -> jax.Array:
    """norm(h): each channel over the spatial axes (conv map) or the feature vector over its axis."""
    axes = (1, 2) if h.ndim == 4 else (-1,)
    mean = jnp.mean(h, axis=axes, keepdims=True)
    var = jnp.var(h, axis=axes, keepdims=True)
    return (h - mean) / jnp.sqrt(var + NORM_EPS)


class Conditioning(nnx.Module):
    """How the component embedding e_k enters the decoder, on the last feature map h.

    cin:    (γ, β) = Dense(2F)(e_k); h' = (1 + γ) ⊙ norm(h) + β   (zero-initialised Dense)
    film:   (γ, β) = Dense(2F)(e_k); h' = (1 + γ) ⊙ h + β         (zero-initialised: h' = h at init)
    concat: h' = [h, Dense(F)(e_k)], broadcast over space           (default init)
    none:   h' = h
    """

    def __init__(self, kind: str, features: int, embedding_dim: int, *, rngs: nnx.Rngs):
        self.kind = kind
        self.features = features
        zeros = nnx.initializers.zeros
        if kind in ("cin", "film"):
            self.dense = nnx.Linear(embedding_dim, 2 * features, kernel_init=zeros, bias_init=zeros, rngs=rngs)
            self.out_features = features
        elif kind == "concat":
            self.dense = nnx.Linear(embedding_dim, features, rngs=rngs)
            self.out_features = 2 * features
        elif kind == "none":
            self.dense = None
            self.out_features = features
        else:
            raise ValueError(f"model.decoder_conditioning must be cin, film, concat or none (got {kind!r})")

    def __call__(self, h: jax.Array, embedding: jax.Array | None) -> jax.Array:
        if self.kind == "none":
            return h
        code = self.dense(embedding)  # [N, 2F] or [N, F]
        if h.ndim == 4:  # conv map [N, H', W', F]: broadcast over space
            code = code[:, None, None, :]
        if self.kind == "concat":
            return jnp.concatenate([h, jnp.broadcast_to(code, h.shape)], axis=-1)
        gamma, beta = jnp.split(code, 2, axis=-1)
        base = _standardise(h) if self.kind == "cin" else h
        return (1.0 + gamma) * base + beta


class OutputHead(nnx.Module):
    """Mean/logit head and, for the heteroscedastic decoder, the σ head.

    dense → Dense(P) reshaped to [H, W, Ch]; conv → Conv(Ch, 3×3, SAME), cropped to H×W.
    σ: 'pixel' is a head of the same form, 'image' is Dense(1) (dense) or global average pooling and
    Dense(1) (conv); σ = σ_min + (σ_max − σ_min)·sigmoid(raw).
    """

    def __init__(self, image_shape: tuple[int, int, int], decoder_type: str, in_features: int,
                 sigma_granularity: str | None, sigma_min: float, sigma_max: float, *, rngs: nnx.Rngs):
        height, width, channels = image_shape
        self.image_shape = tuple(image_shape)
        self.decoder_type = decoder_type
        self.sigma_granularity = sigma_granularity  # None: no σ head
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.mean_head = self._pixel_head(in_features, rngs)
        if sigma_granularity == "pixel":
            self.sigma_head = self._pixel_head(in_features, rngs)
        elif sigma_granularity == "image":
            self.sigma_head = nnx.Linear(in_features, 1, rngs=rngs)
        else:
            self.sigma_head = None

    def _pixel_head(self, in_features: int, rngs: nnx.Rngs) -> nnx.Module:
        height, width, channels = self.image_shape
        if self.decoder_type == "conv":
            return nnx.Conv(in_features, channels, (3, 3), padding="SAME", rngs=rngs)
        return nnx.Linear(in_features, height * width * channels, rngs=rngs)

    def _pixels(self, head: nnx.Module, h: jax.Array, as_matmuls: bool) -> jax.Array:
        height, width, channels = self.image_shape
        y = conv3x3(head, h) if as_matmuls and self.decoder_type == "conv" else head(h)
        if self.decoder_type == "conv":
            return y[:, :height, :width, :]
        return y.reshape(h.shape[0], height, width, channels)

    def __call__(self, h: jax.Array, as_matmuls: bool = False) -> tuple[jax.Array, jax.Array | None]:
        """``as_matmuls``: a conv head as a ``conv3x3`` matmul."""
        out = self._pixels(self.mean_head, h, as_matmuls)
        if self.sigma_head is None:
            return out, None
        if self.sigma_granularity == "pixel":
            raw = self._pixels(self.sigma_head, h, as_matmuls)
        else:
            pooled = jnp.mean(h, axis=(1, 2)) if h.ndim == 4 else h  # global average pooling (conv)
            raw = self.sigma_head(pooled)[:, 0]
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * jax.nn.sigmoid(raw)
        return out, sigma


class ClassifierHead(nnx.Module):
    """Two blocks of Dense(h) → leaky_relu(0.01) → Dropout, then Dense(C) logits.

    Each dropout layer draws its mask from the explicit key (folded with the block's index), so the
    module holds no RNG state.
    """

    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout_rate: float, *, rngs: nnx.Rngs):
        self.hidden = nnx.List([nnx.Linear(in_features, hidden, rngs=rngs), nnx.Linear(hidden, hidden, rngs=rngs)])
        self.dropout = nnx.Dropout(float(dropout_rate))
        self.logits = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, h: jax.Array, *, train: bool, key: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.hidden):
            h = jax.nn.leaky_relu(layer(h), DENSE_SLOPE)
            h = self.dropout(h, deterministic=not train, rngs=jax.random.fold_in(key, i))
        return self.logits(h)
