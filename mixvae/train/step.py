"""The compiled functions of a run: one scanned epoch, one evaluation chunk,
one diagnostics chunk.

Everything that changes during training without recompiling — schedule factors, temperature, the
active mask, the kick bias, the straight-through switch, τ counts — is an array argument. The model
is used in the functional NNX form: ``graphdef`` is closed over, parameters travel as a state pytree.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mixvae.model import RouteCtx, compute_terms, tau as tau_lib
from mixvae.model.losses import Factors, objective
from mixvae.model.mixvae import blended_sigma, mean_images
from mixvae.model.routing import gumbel_noise, mask_logits, masked_softmax

F32 = jnp.float32
# Random streams, folded into the root key.
STREAM_INIT, STREAM_SHUFFLE, STREAM_STEPS, STREAM_EVAL = 0, 1, 2, 3


@flax.struct.dataclass
class Schedule:
    """Per-epoch host decisions, passed to the compiled epoch as arrays."""
    kl_z_scale: jax.Array        # β(n)
    kl_c_scale: jax.Array        # κ(n), times the kick's regulariser scale
    temperature: jax.Array       # Gumbel temperature of the training steps
    straight_through: jax.Array  # 1.0 = straight-through on in the training steps
    active_mask: jax.Array       # [K]
    kick_bias: jax.Array         # [K]
    cluster_init_scale: jax.Array  # γ(n): weight factor of the warm-start clustering term


@flax.struct.dataclass
class TrainState:
    params: Any                  # nnx.State of the model (nnx.Param only)
    opt_state: Any
    tau_counts: jax.Array        # [K, C] soft counts (a [1, 1] placeholder when τ is off)
    step: jax.Array              # int32 global step


def param_masks(params) -> tuple[Any, Any]:
    """(decay mask, pseudo-input mask): kernels of Dense/Conv layers are decayed; pseudo-inputs learn slower."""
    def names(path):
        return {getattr(p, "key", getattr(p, "name", None)) for p in path}
    decay = jax.tree_util.tree_map_with_path(lambda path, _: "kernel" in names(path), params)
    pseudo = jax.tree_util.tree_map_with_path(lambda path, _: "pseudo_inputs" in names(path), params)
    return decay, pseudo


def make_optimizer(cfg, params) -> optax.GradientTransformation:
    """clip → AdamW with decoupled decay on kernels → pseudo-input learning-rate scale."""
    t, m = cfg.training, cfg.model
    decay, pseudo = param_masks(params)
    parts = []
    if t.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(t.grad_clip_norm))
    parts.append(optax.adamw(t.learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay,
                             mask=decay))
    if m.prior_type == "vamp":
        parts.append(optax.masked(optax.scale(m.vamp_pseudo_lr_scale), pseudo))
    return optax.chain(*parts)


def _entropy(p):
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _argmax_onehot(r, active_mask):
    k = r.shape[-1]
    return jax.nn.one_hot(jnp.argmax(jnp.where(active_mask > 0.5, r, -1.0), axis=-1), k, dtype=F32)


class Functions:
    """Builds the three functions of a run for one config, data shape and batch layout."""

    def __init__(self, cfg, graphdef, tx, *, image_shape, n_train: int, num_labeled: int):
        self.cfg = cfg
        self.graphdef = graphdef
        self.tx = tx
        self.image_shape = tuple(image_shape)
        m, t = cfg.model, cfg.training
        self.batch = t.batch_size
        self.n_train = n_train
        if t.drop_remainder:
            self.steps = n_train // self.batch
        else:
            self.steps = -(-n_train // self.batch)
        self.use_tau = m.use_tau_classifier
        self.mixture = m.is_mixture_based
        self.comp_dec = m.is_component_decoding
        self.gumbel = m.use_gumbel_softmax and self.comp_dec
        self.hetero = m.use_heteroscedastic_decoder
        self.num_labeled = num_labeled
        self.k = m.num_components
        self.cluster_init = "loss.cluster_init" in self._step_keys()  # the warm-start term is on
        # XLA:CPU runs convolutions inside a while loop (a rolled lax.scan) about 8× slower than the same
        # step compiled on its own (measured, docs/performance.md), so conv models on the CPU drive the
        # epoch from the host: one compiled step per call, sums kept on the device, one fetch per epoch.
        self.host_loop = ("conv" in (m.encoder_type, m.decoder_type)) and jax.default_backend() == "cpu"

    # --- helpers --------------------------------------------------------------------------------

    def _model(self, params):
        return nnx.merge(self.graphdef, params)

    def _tau(self, counts):
        return counts if self.use_tau else None

    def _objective(self, params, x, y, c, valid, sched: Schedule, key, tau_counts):
        model = self._model(params)
        ctx = RouteCtx(active_mask=sched.active_mask, kick_bias=sched.kick_bias,
                       temperature=sched.temperature, straight_through=sched.straight_through)
        fwd = model(x, ctx, train=True, key=key)
        factors = Factors(kl_z=sched.kl_z_scale, kl_c=sched.kl_c_scale, cluster_init=sched.cluster_init_scale)
        loss, terms = objective(self.cfg, model, fwd, x, y, valid, self._tau(tau_counts), factors,
                                c if self.cluster_init else None)
        labeled = ((y >= 0) & (valid > 0)).astype(F32)
        return loss, (fwd, terms, labeled)

    # --- the epoch ------------------------------------------------------------------------------

    def _batches(self, epoch, shuffle_key):
        """The epoch's batch indices [S, B] and validity mask [S, B], from a device-side permutation."""
        n, b, s = self.n_train, self.batch, self.steps
        perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
        total = s * b
        pad = total - n if total > n else 0
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])[:total].reshape(s, b)
        valid = (jnp.arange(total) < n).astype(F32).reshape(s, b) if pad else jnp.ones((s, b), F32)
        return idx, valid

    def _decay_tau(self, state: TrainState) -> TrainState:
        """N ← α₀ + δ (N − α₀) at the start of each epoch."""
        if not self.use_tau:
            return state
        m = self.cfg.model
        return state.replace(tau_counts=tau_lib.decay_counts(state.tau_counts, m.tau_smoothing_alpha,
                                                             m.tau_count_decay))

    def _train_step(self, state: TrainState, sums, train_x, train_y, train_c, bidx, bvalid, sched: Schedule,
                    steps_key):
        """One optimiser step on the batch ``bidx``; τ evidence and the epoch sums updated."""
        x, y, c = train_x[bidx], train_y[bidx], train_c[bidx]
        key = jax.random.fold_in(steps_key, state.step)
        grad_fn = jax.value_and_grad(self._objective, has_aux=True)
        (loss, (fwd, terms, labeled)), grads = grad_fn(state.params, x, y, c, bvalid, sched, key,
                                                       state.tau_counts)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        counts = state.tau_counts
        if self.use_tau:  # evidence from this step's deterministic responsibilities (pre-update)
            counts = tau_lib.update_counts(counts, fwd.responsibilities, y, bvalid)
        sums = self._accumulate(sums, fwd, terms, labeled, bvalid, loss, sched.active_mask)
        return TrainState(params=params, opt_state=opt_state, tau_counts=counts, step=state.step + 1), sums

    def epoch(self, state: TrainState, train_x, train_y, train_c, sched: Schedule, epoch, shuffle_key, steps_key):
        """One epoch: permute on the device, gather batches, lax.scan over the train steps."""
        idx, valid = self._batches(epoch, shuffle_key)
        state = self._decay_tau(state)

        def body(carry, batch):
            return self._train_step(*carry, train_x, train_y, train_c, *batch, sched, steps_key), None

        (state, sums), _ = jax.lax.scan(body, (state, self._zero_sums()), (idx, valid))
        return state, sums

    def epoch_step(self, state: TrainState, sums, train_x, train_y, train_c, sched: Schedule, epoch, step_in_epoch,
                   shuffle_key, steps_key):
        """Step ``step_in_epoch`` of an epoch, for the host-driven epoch (``host_loop``): the same
        permutation, batches, τ decay and sums as the scanned epoch, one compiled step per call."""
        idx, valid = self._batches(epoch, shuffle_key)
        if self.use_tau:
            decayed = self._decay_tau(state).tau_counts
            state = state.replace(tau_counts=jnp.where(step_in_epoch == 0, decayed, state.tau_counts))
        return self._train_step(state, sums, train_x, train_y, train_c, idx[step_in_epoch], valid[step_in_epoch],
                                sched, steps_key)

    def zero_sums(self):
        return self._zero_sums()

    def _zero_sums(self):
        z = jnp.zeros((), F32)
        k = self.k
        sums = {"n_images": z, "n_steps": z, "n_labeled": z, "loss.objective": z,
                "image": {key: z for key in self._image_keys()},
                "labeled": {key: z for key in self._labeled_keys()},
                "step": {key: z for key in self._step_keys()}}
        if self.mixture:
            sums.update(usage=jnp.zeros((k,), F32), confidence=z, entropy=z, winners=jnp.zeros((k,), F32))
        if self.gumbel:
            sums["routing_confidence"] = z
        return sums

    def _image_keys(self):
        from mixvae.model import enabled_terms
        return [k for k, r in enabled_terms(self.cfg, self.num_labeled).items()
                if r is None and k in ("loss.recon", "loss.kl_z", "loss.kl_c", "loss.kl_c_logit_mog")]

    def _labeled_keys(self):
        from mixvae.model import enabled_terms
        return [k for k, r in enabled_terms(self.cfg, self.num_labeled).items()
                if r is None and k == "loss.classifier"]

    def _step_keys(self):
        from mixvae.model import enabled_terms
        return [k for k, r in enabled_terms(self.cfg, self.num_labeled).items()
                if r is None and k in ("loss.dirichlet", "loss.diversity", "loss.usage_balance", "loss.l1",
                                      "loss.cluster_init")]

    def _accumulate(self, sums, fwd, terms, labeled, valid, objective, active_mask):
        out = dict(sums)
        out["n_images"] = sums["n_images"] + jnp.sum(valid)
        out["n_steps"] = sums["n_steps"] + 1.0
        out["n_labeled"] = sums["n_labeled"] + jnp.sum(labeled)
        out["loss.objective"] = sums["loss.objective"] + objective
        out["image"] = {k: sums["image"][k] + jnp.sum(terms.image[k] * valid) for k in sums["image"]}
        out["labeled"] = {k: sums["labeled"][k] + jnp.sum(terms.labeled[k]) for k in sums["labeled"]}
        out["step"] = {k: sums["step"][k] + terms.step[k] for k in sums["step"]}
        if self.mixture:
            r = fwd.responsibilities
            v = valid[:, None]
            out["usage"] = sums["usage"] + jnp.sum(r * v, axis=0)
            out["confidence"] = sums["confidence"] + jnp.sum(jnp.max(r, axis=-1) * valid)
            out["entropy"] = sums["entropy"] + jnp.sum(_entropy(r) * valid)
            out["winners"] = sums["winners"] + jnp.sum(_argmax_onehot(r, active_mask) * v, axis=0)
        if self.gumbel:
            out["routing_confidence"] = sums["routing_confidence"] + jnp.sum(jnp.max(fwd.soft_sample, -1) * valid)
        return out

    # --- evaluation ------------------------------------------------------------------------------

    def _eval_forward(self, params, x, active_mask, temperature, key):
        model = self._model(params)
        k = self.k
        ctx = RouteCtx(active_mask=active_mask, kick_bias=jnp.zeros((k,), F32), temperature=temperature,
                       straight_through=jnp.asarray(1.0 if self.cfg.model.use_straight_through_gumbel else 0.0, F32))
        return model, model(x, ctx, train=False, key=key)

    def evaluate(self, params, tau_counts, x, y, valid, active_mask, temperature, chunk_index, eval_key):
        """Evaluation mode on one chunk → per-image arrays (host reductions happen once per split)."""
        key = jax.random.fold_in(eval_key, chunk_index)
        model, fwd = self._eval_forward(params, x, active_mask, temperature, key)
        terms = compute_terms(self.cfg, model, fwd, x, y, valid, self._tau(tau_counts))
        out = {"image": terms.image, "labeled": terms.labeled, "step": terms.step,
               "z_selected": self._selected_latent(fwd)}
        if self.mixture:
            out["responsibilities"] = fwd.responsibilities
        if self.use_tau:
            tau = tau_lib.tau_map(tau_counts)
            pred, certainty, _ = tau_lib.predict(fwd.responsibilities, tau)
            out.update(tau_pred=pred, tau_certainty=certainty, tau_ood=tau_lib.ood_score(fwd.responsibilities, tau))
        if fwd.class_logits is not None:
            probs = jax.nn.softmax(fwd.class_logits, axis=-1)
            out.update(class_pred=jnp.argmax(probs, -1), class_certainty=jnp.max(probs, -1))
        if self.hetero:
            sigma = blended_sigma(fwd)
            lo, hi = self.cfg.model.sigma_min, self.cfg.model.sigma_max
            margin = 0.01 * (hi - lo)
            per_pixel = sigma if sigma.ndim == 4 else jnp.broadcast_to(sigma[:, None, None, None], x.shape)
            axes = (1, 2, 3)
            sat = ((per_pixel < lo + margin) | (per_pixel > hi - margin)).astype(F32)
            out["sigma"] = {
                "sum": jnp.sum(sigma.reshape(x.shape[0], -1), -1),
                "sumsq": jnp.sum(jnp.square(sigma.reshape(x.shape[0], -1)), -1),
                "count": jnp.full((x.shape[0],), float(sigma[0].size), F32),
                "saturated": jnp.sum(sat.reshape(x.shape[0], -1), -1) if sigma.ndim == 4
                else sat[:, 0, 0, 0],
                "z2": jnp.sum(jnp.square((x - fwd.recon) / per_pixel), axis=axes),
            }
        return out

    def _selected_latent(self, fwd):
        if fwd.z_mean.ndim == 3:  # decentralized: the latent of the argmax component
            winner = jnp.argmax(fwd.responsibilities, axis=-1)
            return jnp.take_along_axis(fwd.z_mean, winner[:, None, None], axis=1)[:, 0]
        return fwd.z_mean

    # --- diagnostics ------------------------------------------------------------------

    def diagnostics(self, params, tau_counts, x, fixed_x, active_mask, temperature, chunk_index, eval_key):
        """Per-image arrays for the diagnostics file, and every component's mean image for fixed images."""
        key = jax.random.fold_in(eval_key, chunk_index)
        model, fwd = self._eval_forward(params, x, active_mask, temperature, key)
        out = {"z_mean": fwd.z_mean}
        if fwd.kl_per_component is not None:
            out["kl_per_component"] = fwd.kl_per_component
        if self.gumbel:  # one training-mode soft Gumbel sample ŝ at the last temperature
            masked = mask_logits(fwd.logits, active_mask)
            g = gumbel_noise(jax.random.fold_in(key, 7), fwd.logits.shape)
            out["routing_sampled"] = masked_softmax((masked + g) / temperature, active_mask)
        if self.hetero:
            out["sigma"] = blended_sigma(fwd)
        # Fixed images: reconstructions and, for component-decoding priors, every component's mean image.
        fmodel, ffwd = self._eval_forward(params, fixed_x, active_mask, temperature, key)
        out["fixed_recon"] = ffwd.recon
        if self.hetero:
            out["fixed_sigma"] = blended_sigma(ffwd)
        if self.comp_dec:
            n = fixed_x.shape[0]
            emb = fmodel.embeddings[...]
            if ffwd.z_mean.ndim == 3:
                z = ffwd.z_mean
            else:
                z = jnp.broadcast_to(ffwd.z_mean[:, None, :], (n, self.k, ffwd.z_mean.shape[-1]))
            e = jnp.broadcast_to(emb[None], (n, *emb.shape))
            o, sig = fmodel.decode(z.reshape(n * self.k, -1), e.reshape(n * self.k, -1))
            out["fixed_percomp"] = mean_images(fmodel.spec, o).reshape(n, self.k, *self.image_shape)
            out["fixed_weights"] = ffwd.routing
            out["fixed_resp"] = ffwd.responsibilities
            if sig is not None:
                out["fixed_percomp_sigma"] = sig.reshape(n, self.k, *sig.shape[1:])
        return out
