"""The MixVAE module and its forward pass.

The forward pass (``MixVAE.__call__``) maps a batch of images to a ``Forward`` record;
``losses.compute_terms`` turns it into named loss terms. Routing state (active mask, kick bias,
temperature, straight-through switch) enters as arrays in a ``RouteCtx``, so changing it never
recompiles. The module holds no RNG state: all noise comes from the step key, split into (reparam,
gumbel, dropout) keys.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from mixvae.config import COMPONENT_DECODING, MIXTURE_BASED, resolved_conditioning
from mixvae.model import priors, routing
from mixvae.model.losses import LinearHead, squared_error_from_head
from mixvae.model.networks import (ClassifierHead, Conditioning, DecoderBackbone, Encoder, OutputHead,
                                   bound_logvar)
from mixvae.model.routing import RouteCtx

@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The static (hashable) part of the config that shapes the model."""

    image_shape: tuple[int, int, int]
    prior_type: str
    num_components: int
    num_classes: int
    latent_dim: int
    latent_layout: str
    encoder_type: str
    decoder_type: str
    hidden_dims: tuple[int, ...]
    conv_channels: tuple[int, ...]
    embedding_dim: int
    conditioning: str
    learnable_pi: bool
    use_gumbel: bool
    use_straight_through: bool
    top_m: int
    likelihood: str                 # 'bce' | 'mse' | 'gaussian' (heteroscedastic)
    sigma_granularity: str | None   # 'pixel' | 'image' when heteroscedastic, else None
    sigma_min: float
    sigma_max: float
    vamp_num_samples_kl: int
    geometric_arrangement: str
    geometric_radius: float
    classifier: str | None          # 'tau' | 'head' | None
    dropout_rate: float
    latent_kl_weighting: str        # 'responsibility' | 'uniform' (decentralized layout)
    decode_chunks: int = 1          # decoded items split into this many rematerialised chunks
    decode_dtype: str = "float32"   # the decoder's arithmetic and activations: 'float32' | 'bfloat16'

    @property
    def is_mixture_based(self) -> bool:
        return self.prior_type in MIXTURE_BASED

    @property
    def is_component_decoding(self) -> bool:
        return self.prior_type in COMPONENT_DECODING

    @property
    def decentralized(self) -> bool:
        return self.latent_layout == "decentralized"

    def expansion_pays(self, batch: int, decoded: int, features: int) -> bool:
        """Whether the forward pass keeps the dense mean head and its inputs h′ (``losses.LinearHead``)
        so that the squared errors, x̂ and σ̂ come from h′ instead of the B·M mean images
        (``losses.squared_error_from_head``): only for squared errors (``mse``, or one σ per image) of
        a dense float32 head, and only when that needs fewer multiplications — the Gram matrix (F²P)
        and W(x − b) (BFP) are paid once per batch, then F² per decode instead of FP."""
        squared = self.likelihood == "mse" or (self.likelihood == "gaussian" and self.sigma_granularity == "image")
        if not squared or self.decoder_type != "dense" or self.decode_dtype != "float32":
            return False
        n, pixels = batch * decoded, math.prod(self.image_shape)
        return features * features * pixels + batch * features * pixels + n * features * features < n * features * pixels

    @staticmethod
    def from_config(cfg, image_shape: tuple[int, int, int]) -> "ModelSpec":
        m = cfg.model
        component_decoding = m.is_component_decoding
        hetero = bool(m.use_heteroscedastic_decoder)
        if m.use_tau_classifier:
            classifier = "tau"
        elif m.head_trained(cfg.data.num_labeled):
            classifier = "head"
        else:
            classifier = None
        # Only component-decoding priors have component embeddings to condition the decoder on.
        conditioning = resolved_conditioning(m.prior_type, m.decoder_conditioning) if component_decoding else "none"
        embedding_dim = m.component_embedding_dim if m.component_embedding_dim is not None else m.latent_dim
        return ModelSpec(
            image_shape=tuple(int(v) for v in image_shape),
            prior_type=m.prior_type,
            num_components=int(m.num_components),
            num_classes=int(m.num_classes),
            latent_dim=int(m.latent_dim),
            latent_layout=m.latent_layout if component_decoding else "shared",
            encoder_type=m.encoder_type,
            decoder_type=m.decoder_type,
            hidden_dims=tuple(int(h) for h in m.hidden_dims),
            conv_channels=tuple(int(c) for c in m.conv_channels),
            embedding_dim=int(embedding_dim),
            conditioning=conditioning,
            learnable_pi=bool(m.learnable_pi),
            use_gumbel=bool(m.use_gumbel_softmax) and component_decoding,
            use_straight_through=bool(m.use_straight_through_gumbel),
            top_m=int(m.top_m_gating) if component_decoding else 0,
            likelihood="gaussian" if hetero else m.reconstruction_loss,
            sigma_granularity=m.sigma_granularity if hetero else None,
            sigma_min=float(m.sigma_min),
            sigma_max=float(m.sigma_max),
            vamp_num_samples_kl=int(m.vamp_num_samples_kl),
            geometric_arrangement=m.geometric_arrangement,
            geometric_radius=float(m.geometric_radius),
            classifier=classifier,
            dropout_rate=float(m.dropout_rate),
            latent_kl_weighting=m.latent_kl_weighting,
            decode_chunks=int(cfg.training.decode_chunks),
            decode_dtype=cfg.training.decode_dtype,
        )


@struct.dataclass
class Forward:
    """Result of one forward pass; fields that do not apply are None.

    B = batch, K = components, M = decoded components per image, D = latent_dim.
    """

    logits: jax.Array | None = None            # y [B, K], component-decoding priors
    responsibilities: jax.Array | None = None  # r [B, K], mixture-based priors
    routing: jax.Array | None = None           # s [B, K], component-decoding priors
    soft_sample: jax.Array | None = None       # ŝ [B, K], training with Gumbel only
    z_mean: jax.Array | None = None            # [B, D] or [B, K, D]
    z_logvar: jax.Array | None = None          # same, bounded to (−10, 10)
    z: jax.Array | None = None                 # same; = z_mean in evaluation
    decoded_index: jax.Array | None = None     # [B, M] int32, component-decoding priors
    decoded_weight: jax.Array | None = None    # w [B, M], component-decoding priors
    out: jax.Array | None = None               # logits (bce) or means: [B, M, H, W, Ch] or [B, H, W, Ch]
    sigma: jax.Array | None = None             # like out (pixel) or [B, M] / [B] (image); heteroscedastic
    recon: jax.Array | None = None             # x̂ [B, H, W, Ch]
    head: LinearHead | None = None             # the dense mean head and its inputs, where the expansion pays
    class_logits: jax.Array | None = None      # [B, C], classifier head only
    kl_z: jax.Array | None = None              # [B] latent KL per image, without kl_weight
    kl_per_component: jax.Array | None = None  # [B, K] KL(q(z_k|x) ‖ prior_k), decentralized only
    active_mask: jax.Array | None = None       # [K] the active mask this pass used (for π^A and p_A)


def mean_images(spec: ModelSpec, out: jax.Array) -> jax.Array:
    """m = sigmoid(o) for Bernoulli logits, else the means themselves (the sigmoid is applied only here)."""
    return jax.nn.sigmoid(out) if spec.likelihood == "bce" else out


def blended_sigma(fwd: Forward) -> jax.Array | None:
    """σ̂ of the blended reconstruction: σ̂² = Σ_k w_k (σ_k² + m_k²) − x̂².

    Per pixel [B, H, W, Ch] for 'pixel' σ; per image [B] for 'image' σ (the mean of σ̂² over the
    pixels). Single-decode priors return σ itself. None without the heteroscedastic head.
    """
    if fwd.sigma is None:
        return None
    if fwd.decoded_weight is None:
        return fwd.sigma
    w = fwd.decoded_weight
    if fwd.head is not None and fwd.sigma.ndim == 2:
        # The mean over pixels of Σ_k w_k (σ_k² + m_k²) − x̂², from Σ_p m_kp² without forming m_k (the
        # per-pixel clamp at 0 never acts: with w ≥ 0 summing to 1 each pixel's mixture variance is ≥ 0).
        num_pixels = math.prod(fwd.recon.shape[1:])
        mean_square = squared_error_from_head(fwd.head, jnp.zeros_like(fwd.recon))  # Σ_p m_kp²  [B, M]
        variance = (jnp.sum(w * jnp.square(fwd.sigma), axis=-1)
                    + (jnp.sum(w * mean_square, axis=-1) - jnp.sum(jnp.square(fwd.recon), axis=(1, 2, 3))) / num_pixels)
        return jnp.sqrt(jnp.maximum(variance, 0.0))
    sigma = fwd.sigma if fwd.sigma.ndim == 5 else fwd.sigma[:, :, None, None, None]
    second_moment = jnp.einsum("bm,bmhwc->bhwc", w, jnp.square(sigma) + jnp.square(fwd.out))
    variance = jnp.maximum(second_moment - jnp.square(fwd.recon), 0.0)
    if fwd.sigma.ndim == 2:
        variance = jnp.mean(variance, axis=(1, 2, 3))
    return jnp.sqrt(variance)


def in_dtype(module: nnx.Module, dtype) -> nnx.Module:
    """A copy of ``module`` whose floating-point weights are cast to ``dtype`` (a traced cast: the
    gradient flows back to the float32 originals)."""
    graphdef, state = nnx.split(module)
    cast = jax.tree_util.tree_map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state)
    return nnx.merge(graphdef, cast)


class MixVAE(nnx.Module):
    """Responsibility-conditioned mixture VAE."""

    def __init__(self, cfg, image_shape: tuple[int, int, int], *, rngs: nnx.Rngs):
        spec = ModelSpec.from_config(cfg, image_shape)
        self.spec = spec
        k, d = spec.num_components, spec.latent_dim
        self.encoder = Encoder(spec.image_shape, spec.encoder_type, spec.hidden_dims, spec.conv_channels,
                               rngs=rngs)
        features = self.encoder.out_features
        heads_out = k * d if spec.decentralized else d
        self.z_mean_head = nnx.Linear(features, heads_out, rngs=rngs)
        self.z_logvar_head = nnx.Linear(features, heads_out, rngs=rngs)

        if spec.is_component_decoding:
            self.logits_head = nnx.Linear(features, k, rngs=rngs)
            self.embeddings = nnx.Param(jax.random.normal(rngs.params(), (k, spec.embedding_dim), jnp.float32))
            self.pi_logits = nnx.Param(jnp.zeros((k,), jnp.float32))
        else:
            self.logits_head = None
            self.embeddings = None
            self.pi_logits = None

        if spec.prior_type == "vamp":
            # Placeholder until the trainer copies init_pseudo_inputs(cfg, train_x) in (set_pseudo_inputs).
            self.pseudo_inputs = nnx.Param(jax.random.uniform(rngs.params(), (k, *spec.image_shape), jnp.float32))
        else:
            self.pseudo_inputs = None

        self.decoder = DecoderBackbone(spec.image_shape, spec.decoder_type, d, spec.hidden_dims,
                                       spec.conv_channels, rngs=rngs)
        self.conditioning = Conditioning(spec.conditioning, self.decoder.out_features, spec.embedding_dim,
                                         rngs=rngs)
        self.output_head = OutputHead(spec.image_shape, spec.decoder_type, self.conditioning.out_features,
                                      spec.sigma_granularity, spec.sigma_min, spec.sigma_max, rngs=rngs)
        if spec.classifier == "head":
            self.classifier_head = ClassifierHead(d, spec.hidden_dims[-1], spec.num_classes, spec.dropout_rate,
                                                  rngs=rngs)
        else:
            self.classifier_head = None

    # --- pieces -------------------------------------------------------------------------------

    def set_pseudo_inputs(self, values) -> None:
        """Copy initial pseudo-inputs (priors.init_pseudo_inputs) into the VampPrior; outside any step."""
        if self.pseudo_inputs is None:
            raise ValueError("set_pseudo_inputs: this model has no VampPrior pseudo-inputs "
                             f"(prior_type is {self.spec.prior_type!r})")
        values = jnp.asarray(values, jnp.float32)
        if values.shape != self.pseudo_inputs[...].shape:
            raise ValueError(f"pseudo-inputs must have shape {self.pseudo_inputs[...].shape}, got {values.shape}")
        self.pseudo_inputs[...] = values

    def pi_logits_value(self) -> jax.Array | None:
        """π logits, under stop-gradient unless π is learnable (so a fixed π stays uniform)."""
        if self.pi_logits is None:
            return None
        value = self.pi_logits[...]
        return value if self.spec.learnable_pi else jax.lax.stop_gradient(value)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """→ (features [B, F], z_mean, z_logvar) with the layout's latent shape."""
        spec = self.spec
        features = self.encoder(x)
        z_mean = self.z_mean_head(features)
        z_logvar = bound_logvar(self.z_logvar_head(features))
        if spec.decentralized:
            shape = (x.shape[0], spec.num_components, spec.latent_dim)
            z_mean, z_logvar = z_mean.reshape(shape), z_logvar.reshape(shape)
        return features, z_mean, z_logvar

    def pseudo_posterior(self) -> tuple[jax.Array, jax.Array]:
        """(m_k, ℓ_k) [K, D]: the pseudo-inputs encoded deterministically by the same encoder."""
        _, mean, logvar = self.encode(self.pseudo_inputs[...])
        return mean, logvar

    def decode(self, z: jax.Array, embedding: jax.Array | None) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """Latents [N, D] (and embeddings [N, E]) → (out [N, H, W, Ch], σ or None, head input h′ or None).

        h′ is what the output head maps to the image (the conditioned feature vector of a dense
        decoder), returned when the decode ran in one piece, for the squared-error expansion
        (``losses.squared_error_from_head``; ``ModelSpec.expansion_pays`` decides whether it is used);
        None when decoded in chunks.

        With ``training.decode_chunks`` = C > 1 the N items are decoded in a loop over C chunks, each
        under rematerialisation: the backward pass recomputes one chunk's decoder activations when it
        needs them instead of keeping all N decodes' activations from the forward pass. The values
        are the same; peak memory falls, at the price of one more decoder forward pass (on the CPU the
        smaller working set often makes it faster too: docs/performance.md).
        """
        n, chunks = z.shape[0], min(self.spec.decode_chunks, z.shape[0])
        if chunks <= 1:
            return self._decode_once(z, embedding)
        graphdef, state = nnx.split(self)
        size = -(-n // chunks)

        @jax.checkpoint
        def decode_chunk(items):
            return nnx.merge(graphdef, state)._decode_once(*items, as_matmuls=True)[:2]

        def chunked(a):  # [N, …] → [C, size, …], padded with zeros (decoded, then dropped)
            return jnp.pad(a, ((0, chunks * size - n),) + ((0, 0),) * (a.ndim - 1)).reshape(chunks, size, *a.shape[1:])
        out, sigma = jax.lax.map(decode_chunk, (chunked(z), None if embedding is None else chunked(embedding)))
        out = out.reshape(chunks * size, *out.shape[2:])[:n]
        return out, None if sigma is None else sigma.reshape(chunks * size, *sigma.shape[2:])[:n], None

    def _decode_once(self, z: jax.Array, embedding: jax.Array | None,
                     as_matmuls: bool = False) -> tuple[jax.Array, jax.Array | None, jax.Array]:
        decoder, conditioning, output_head = self.decoder, self.conditioning, self.output_head
        if self.spec.decode_dtype == "bfloat16":  # bfloat16 copies of the float32 weights; gradients reach them
            decoder, conditioning, output_head = (in_dtype(part, jnp.bfloat16) for part in (decoder, conditioning, output_head))
            z = z.astype(jnp.bfloat16)
            embedding = None if embedding is None else embedding.astype(jnp.bfloat16)
        h = decoder(z, as_matmuls)
        h = conditioning(h, embedding)
        out, sigma = output_head(h, as_matmuls)
        # the likelihood and everything after it in float32
        return out.astype(jnp.float32), None if sigma is None else sigma.astype(jnp.float32), h

    def decode_items(self, z_items: jax.Array, e_items: jax.Array
                     ) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
        """(image, component) pairs: latents [B, M, D], embeddings [B, M, E] → out [B, M, H, W, Ch], σ and
        the head input h′ [B, M, …] (or None, as in ``decode``).

        The decoder runs on one batch of B·M items.
        """
        batch, m = z_items.shape[:2]
        out, sigma, head_input = self.decode(z_items.reshape(batch * m, -1), e_items.reshape(batch * m, -1))
        out = out.reshape(batch, m, *self.spec.image_shape)
        if sigma is not None:
            sigma = sigma.reshape(batch, m, *sigma.shape[1:])
        if head_input is not None:
            head_input = head_input.reshape(batch, m, *head_input.shape[1:])
        return out, sigma, head_input

    def decode_every_component(self, z_mean: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Every component decoded from the posterior mean, ignoring routing and top-M:
        (mean images m_k [B, K, H, W, Ch], σ_k or None). For the per-component diagnostics of
        component-decoding priors; z_mean is [B, D] (shared latent) or [B, K, D] (decentralized)."""
        spec = self.spec
        if not spec.is_component_decoding:
            raise ValueError("decode_every_component needs a component-decoding prior "
                             f"(prior_type is {spec.prior_type!r})")
        batch, k = z_mean.shape[0], spec.num_components
        z_items = z_mean if spec.decentralized else jnp.broadcast_to(z_mean[:, None, :], (batch, k, spec.latent_dim))
        embeddings = self.embeddings[...]
        out, sigma, _ = self.decode_items(z_items, jnp.broadcast_to(embeddings, (batch, *embeddings.shape)))
        return mean_images(spec, out), sigma

    # --- forward ------------------------------------------------------------------------------

    def __call__(self, x: jax.Array, ctx: RouteCtx, *, train: bool, key: jax.Array) -> Forward:
        """The forward pass (docs/model.md). ``key`` is the step key (split into reparam, gumbel, dropout);
        in evaluation there is no noise and ``key`` only fixes the VampPrior KL samples."""
        spec = self.spec
        reparam_key, gumbel_key, dropout_key = jax.random.split(key, 3)

        features, z_mean, z_logvar = self.encode(x)
        if train:  # z = μ + exp(½ℓ) ⊙ ε, independently per (image, component, dimension)
            z = z_mean + jnp.exp(0.5 * z_logvar) * jax.random.normal(reparam_key, z_mean.shape, z_mean.dtype)
        else:
            z = z_mean
        fwd = Forward(z_mean=z_mean, z_logvar=z_logvar, z=z, active_mask=ctx.active_mask)

        if spec.is_component_decoding:
            fwd = self._decode_components(fwd, features, ctx, train=train, key=gumbel_key)
        else:
            out, sigma, _ = self.decode(z, None)
            fwd = fwd.replace(out=out, sigma=sigma, recon=mean_images(spec, out))

        if spec.prior_type == "vamp":
            pseudo_mean, pseudo_logvar = self.pseudo_posterior()
            kl_key = jax.random.fold_in(reparam_key, 1) if train else key  # the fixed evaluation key
            fwd = fwd.replace(
                responsibilities=priors.vamp_responsibilities(z_mean, pseudo_mean, pseudo_logvar, ctx.active_mask),
                kl_z=priors.vamp_kl(kl_key, z_mean, z_logvar, pseudo_mean, pseudo_logvar, spec.vamp_num_samples_kl))
        else:
            fwd = self._gaussian_latent_kl(fwd)

        if self.classifier_head is not None:
            # Decentralized: the routing-weighted latent Σ_k s_k z_k.
            head_input = jnp.einsum("bk,bkd->bd", fwd.routing, z) if spec.decentralized else z
            fwd = fwd.replace(class_logits=self.classifier_head(head_input, train=train, key=dropout_key))
        return fwd

    def responsibilities(self, x: jax.Array, ctx: RouteCtx) -> jax.Array:
        """r(x) [B, K] as the training forward pass computes it, without decoding (the encoder's routing
        logits, or for the VampPrior the pseudo-input components of the latent mean)."""
        features, z_mean, _ = self.encode(x)
        if self.spec.prior_type == "vamp":
            pseudo_mean, pseudo_logvar = self.pseudo_posterior()
            return priors.vamp_responsibilities(z_mean, pseudo_mean, pseudo_logvar, ctx.active_mask)
        logits = routing.mask_logits(self.logits_head(features), ctx.active_mask, ctx.kick_bias)
        return routing.masked_softmax(logits, ctx.active_mask)

    def _decode_components(self, fwd: Forward, features: jax.Array, ctx: RouteCtx, *, train: bool,
                           key: jax.Array) -> Forward:
        """Routing, top-M selection, per-component decoding and the blend x̂ = Σ_k w_k m_k."""
        spec = self.spec
        batch = features.shape[0]
        logits = self.logits_head(features)
        routed = routing.route(logits, ctx, train=train, key=key, use_gumbel=spec.use_gumbel,
                               use_straight_through=spec.use_straight_through)
        index, weight = routing.select_decoded(routed.ranking, routed.routing, ctx.active_mask, spec.top_m)
        decoded = index.shape[1]
        gated = 0 < spec.top_m < spec.num_components  # M = K takes the ungated path: bit-identical to M = 0
        if spec.decentralized:
            z_items = jnp.take_along_axis(fwd.z, index[:, :, None], axis=1) if gated else fwd.z
        else:
            z_items = jnp.broadcast_to(fwd.z[:, None, :], (batch, decoded, spec.latent_dim))
        embeddings = self.embeddings[...]
        e_items = embeddings[index] if gated else jnp.broadcast_to(embeddings, (batch, *embeddings.shape))
        out, sigma, head_input = self.decode_items(z_items, e_items)
        head = None
        if head_input is not None and spec.expansion_pays(batch, decoded, head_input.shape[-1]):
            # The squared errors and σ̂ then come from h′, and the per-decode means are never formed (XLA
            # drops ``out`` when nothing reads it). x̂ = Σ_m w_m (h′_m W + b) = (Σ_m w_m h′_m) W + (Σ_m w_m) b.
            mean_head = self.output_head.mean_head
            head = LinearHead(features=head_input, kernel=mean_head.kernel[...], bias=mean_head.bias[...])
            recon = (jnp.einsum("bm,bmf->bf", weight, head_input) @ head.kernel
                     + jnp.sum(weight, axis=-1, keepdims=True) * head.bias).reshape(batch, *spec.image_shape)
        else:
            recon = jnp.einsum("bm,bmhwc->bhwc", weight, mean_images(spec, out))  # blends probabilities for bce
        return fwd.replace(logits=logits, responsibilities=routed.responsibilities, routing=routed.routing,
                           soft_sample=routed.soft_sample, decoded_index=index, decoded_weight=weight,
                           out=out, sigma=sigma, recon=recon, head=head)

    def _gaussian_latent_kl(self, fwd: Forward) -> Forward:
        """KL_b for the standard, mixture and geometric_mog priors."""
        spec = self.spec
        if spec.prior_type == "geometric_mog":
            centres = jnp.asarray(priors.geometric_centres(spec.geometric_arrangement, spec.num_components,
                                                           spec.latent_dim, spec.geometric_radius))
        else:
            centres = 0.0  # N(0, I)
        if spec.decentralized:
            per_component = priors.gaussian_kl(fwd.z_mean, fwd.z_logvar, centres)  # [B, K]
            # Σ_k r_k KL_k: each image pays for the latent of the component that explains it (the
            # mixture ELBO); 'uniform' charges every component's latent on every image.
            weight = fwd.responsibilities if spec.latent_kl_weighting == "responsibility" else 1.0
            return fwd.replace(kl_z=jnp.sum(weight * per_component, axis=-1), kl_per_component=per_component)
        if spec.prior_type == "geometric_mog":  # Σ_k r_k KL(q(z|x) ‖ N(c_k, I))
            to_centres = priors.gaussian_kl(fwd.z_mean[:, None, :], fwd.z_logvar[:, None, :], centres)
            return fwd.replace(kl_z=jnp.sum(fwd.responsibilities * to_centres, axis=-1))
        return fwd.replace(kl_z=priors.gaussian_kl(fwd.z_mean, fwd.z_logvar))
