"""The compiled functions of a run: the train step and the epoch made of it, the evaluation step and
the diagnostics step.

Everything that changes during training without recompiling — schedule factors, temperature, the
active mask, the kick bias, the straight-through switch, τ counts — is an array argument. The model
is used in the functional NNX form: ``graphdef`` is closed over, parameters travel as a state pytree.
An epoch is one lax.scan over its train steps or, where that is slow (conv models on the CPU), one
compiled step per host call; both draw the same batches and keep the same running sums. On several
devices each gathered batch is split over them (``shard``, from ``mixvae.train.devices``).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mixvae.model import losses
from mixvae.model import tau as tau_lib
from mixvae.model.entropy import entropy
from mixvae.model.inference import label_predictions
from mixvae.model.losses import IMAGE_TERMS, LABELED_TERMS, STEP_TERMS, Factors, compute_terms, enabled_terms
from mixvae.model.mixvae import blended_sigma
from mixvae.model.routing import RouteCtx, gumbel_softmax_sample, mask_logits

F32 = jnp.float32
# Random streams, folded into the root key.
STREAM_INIT, STREAM_SHUFFLE, STREAM_STEPS, STREAM_EVAL = 0, 1, 2, 3
# The diagnostics draw their soft Gumbel sample from the chunk's evaluation key folded with this.
_DIAGNOSTICS_GUMBEL_STREAM = 7
_NEIGHBOUR_STREAM = 8  # folded into a step's key: which neighbour each image meets


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

    def route(self) -> RouteCtx:
        """The routing state of the training steps."""
        return RouteCtx(active_mask=self.active_mask, kick_bias=self.kick_bias, temperature=self.temperature,
                        straight_through=self.straight_through)

    def factors(self) -> Factors:
        """The schedule factors β, κ and γ of the objective."""
        return Factors(kl_z=self.kl_z_scale, kl_c=self.kl_c_scale, cluster_init=self.cluster_init_scale)


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


def epoch_batches(n_train: int, batch_size: int, steps: int, epoch, shuffle_key) -> tuple[jax.Array, jax.Array]:
    """The epoch's batch indices [S, B] and validity mask [S, B], from a device-side permutation.

    When the epoch keeps its remainder, the last batch is padded with image 0 marked invalid.
    """
    perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n_train)
    total = steps * batch_size
    pad = total - n_train if total > n_train else 0
    idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])[:total].reshape(steps, batch_size)
    if not pad:
        return idx, jnp.ones((steps, batch_size), F32)
    return idx, (jnp.arange(total) < n_train).astype(F32).reshape(steps, batch_size)


def winner_onehot(responsibilities: jax.Array, active_mask: jax.Array) -> jax.Array:
    """One-hot of each image's most responsible active component → [B, K]."""
    k = responsibilities.shape[-1]
    winner = jnp.argmax(jnp.where(active_mask > 0.5, responsibilities, -1.0), axis=-1)
    return jax.nn.one_hot(winner, k, dtype=F32)


def selected_latent(fwd) -> jax.Array:
    """The posterior mean of each image → [B, D]; decentralized: that of its most responsible component."""
    if fwd.z_mean.ndim == 3:
        winner = jnp.argmax(fwd.responsibilities, axis=-1)
        return jnp.take_along_axis(fwd.z_mean, winner[:, None, None], axis=1)[:, 0]
    return fwd.z_mean


def sigma_statistics(sigma: jax.Array, x: jax.Array, recon: jax.Array, sigma_min: float,
                     sigma_max: float) -> dict[str, jax.Array]:
    """Per image, the pieces of the uncertainty metrics from σ̂ (per pixel [B, H, W, Ch] or per image [B]):
    Σσ̂, Σσ̂², the number of σ̂ values, how many lie within 1 % of the range's ends, and Σ_p ((x − x̂)/σ̂)²."""
    n = x.shape[0]
    margin = 0.01 * (sigma_max - sigma_min)
    per_pixel = sigma if sigma.ndim == 4 else jnp.broadcast_to(sigma[:, None, None, None], x.shape)
    saturated = ((per_pixel < sigma_min + margin) | (per_pixel > sigma_max - margin)).astype(F32)
    return {
        "sum": jnp.sum(sigma.reshape(n, -1), -1),
        "sumsq": jnp.sum(jnp.square(sigma.reshape(n, -1)), -1),
        "count": jnp.full((n,), float(sigma[0].size), F32),
        "saturated": jnp.sum(saturated.reshape(n, -1), -1) if sigma.ndim == 4 else saturated[:, 0, 0, 0],
        "z2": jnp.sum(jnp.square((x - recon) / per_pixel), axis=(1, 2, 3)),
    }


class Functions:
    """The compiled functions of one run, for one config, data shape and batch layout."""

    def __init__(self, cfg, graphdef, tx, *, image_shape, n_train: int, num_labeled: int, shard=None):
        self.cfg = cfg
        # Lays a batch (a pytree of [B, …] arrays) out over the devices; the identity on one device.
        self.shard = shard or (lambda tree: tree)
        self.graphdef = graphdef
        self.tx = tx
        self.image_shape = tuple(image_shape)
        m, t = cfg.model, cfg.training
        self.batch = t.batch_size
        self.n_train = n_train
        self.steps = n_train // self.batch if t.drop_remainder else -(-n_train // self.batch)
        self.use_tau = m.use_tau_classifier
        self.mixture = m.is_mixture_based
        self.comp_dec = m.is_component_decoding
        self.gumbel = m.use_gumbel_softmax and self.comp_dec
        self.hetero = m.use_heteroscedastic_decoder
        self.k = m.num_components
        enabled = {name for name, reason in enabled_terms(cfg, num_labeled).items() if reason is None}
        # The enabled terms by how a batch reduces them, as in losses.Terms.
        groups = {"image": IMAGE_TERMS, "labeled": LABELED_TERMS, "step": STEP_TERMS}
        self.terms = {group: [name for name in names if name in enabled] for group, names in groups.items()}
        self.cluster_init = "loss.cluster_init" in enabled  # the warm-start term is on
        self.neighbours = "loss.neighbour" in enabled       # the neighbour-agreement term is on
        self.conv = "conv" in (m.encoder_type, m.decoder_type)

    @functools.cached_property
    def host_loop(self) -> bool:
        """XLA:CPU runs convolutions inside a while loop (a rolled lax.scan) about 8× slower than the same
        step compiled on its own (measured, docs/performance.md), so conv models on the CPU drive the
        epoch from the host: one compiled step per call, sums kept on the device, one fetch per epoch.
        Asked only when compiling: asking for the backend starts it, and validation must not (a job of
        several processes joins before that, mixvae/processes.py)."""
        return self.conv and jax.default_backend() == "cpu"

    def _model(self, params):
        return nnx.merge(self.graphdef, params)

    def _tau(self, counts):
        return counts if self.use_tau else None

    # --- the train step -------------------------------------------------------------------------

    def objective(self, params, x, y, c, x_nb, valid, sched: Schedule, key, tau_counts):
        """The training objective on one batch → (L, (forward pass, terms, labeled mask)).

        ``c`` holds the warm-start clusters of the images (ignored unless that term is on) and ``x_nb``
        one nearest training neighbour of each (None while the neighbour term is off).
        """
        model = self._model(params)
        ctx = sched.route()
        fwd = model(x, ctx, train=True, key=key)
        r_nb = model.responsibilities(x_nb, ctx) if self.neighbours else None
        loss, terms = losses.objective(self.cfg, model, fwd, x, y, valid, self._tau(tau_counts), sched.factors(),
                                       c if self.cluster_init else None, r_nb)
        labeled = tau_lib.labeled_mask(y, valid)
        return loss, (fwd, terms, labeled)

    def train_step(self, state: TrainState, sums, train_x, train_y, guides, bidx, bvalid, sched: Schedule,
                   steps_key):
        """One optimiser step on the batch ``bidx``: the gradient of the objective, the optimiser update,
        τ evidence from this step's responsibilities (before the update) and the epoch's running sums.

        ``guides`` holds per training image its warm-start cluster ``cluster`` [N] and its nearest
        training neighbours ``neighbours`` [N, k]; each image meets one of them, drawn at random."""
        key = jax.random.fold_in(steps_key, state.step)
        x_nb = None  # one nearest training neighbour per image, while the neighbour term is on
        if self.neighbours:
            neighbours = guides["neighbours"][bidx]
            pick = jax.random.randint(jax.random.fold_in(key, _NEIGHBOUR_STREAM), bidx.shape, 0, neighbours.shape[1])
            x_nb = train_x[jnp.take_along_axis(neighbours, pick[:, None], axis=1)[:, 0]]
        x, y, c, x_nb, bvalid = self.shard((train_x[bidx], train_y[bidx], guides["cluster"][bidx], x_nb, bvalid))
        grad_fn = jax.value_and_grad(self.objective, has_aux=True)
        (loss, (fwd, terms, labeled)), grads = grad_fn(state.params, x, y, c, x_nb, bvalid, sched, key,
                                                       state.tau_counts)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        counts = state.tau_counts
        if self.use_tau:
            counts = tau_lib.update_counts(counts, fwd.responsibilities, y, bvalid)
        sums = self.add_to_sums(sums, fwd, terms, labeled, bvalid, loss, sched.active_mask)
        return TrainState(params=params, opt_state=opt_state, tau_counts=counts, step=state.step + 1), sums

    # --- the epoch ------------------------------------------------------------------------------

    def _decay_tau(self, state: TrainState) -> TrainState:
        """N ← α₀ + δ (N − α₀) at the start of each epoch."""
        if not self.use_tau:
            return state
        m = self.cfg.model
        return state.replace(tau_counts=tau_lib.decay_counts(state.tau_counts, m.tau_smoothing_alpha,
                                                             m.tau_count_decay))

    def epoch(self, state: TrainState, train_x, train_y, guides, sched: Schedule, epoch, shuffle_key, steps_key):
        """One epoch: permute on the device, gather batches, lax.scan over the train steps."""
        idx, valid = epoch_batches(self.n_train, self.batch, self.steps, epoch, shuffle_key)
        state = self._decay_tau(state)

        def body(carry, batch):
            return self.train_step(*carry, train_x, train_y, guides, *batch, sched, steps_key), None

        (state, sums), _ = jax.lax.scan(body, (state, self.zero_sums()), (idx, valid))
        return state, sums

    def epoch_step(self, state: TrainState, sums, train_x, train_y, guides, sched: Schedule, epoch, step_in_epoch,
                   shuffle_key, steps_key):
        """Step ``step_in_epoch`` of an epoch driven from the host (``host_loop``): the same permutation,
        batches, τ decay and sums as the scanned epoch, one compiled step per call."""
        idx, valid = epoch_batches(self.n_train, self.batch, self.steps, epoch, shuffle_key)
        if self.use_tau:
            decayed = self._decay_tau(state).tau_counts
            state = state.replace(tau_counts=jnp.where(step_in_epoch == 0, decayed, state.tau_counts))
        return self.train_step(state, sums, train_x, train_y, guides, idx[step_in_epoch], valid[step_in_epoch],
                               sched, steps_key)

    # --- the epoch's running sums -------------------------------------------------------------------

    def zero_sums(self) -> dict:
        """The running sums of an epoch before its first step; the host divides them once per epoch."""
        z = jnp.zeros((), F32)
        sums = {"n_images": z, "n_steps": z, "n_labeled": z, "loss.objective": z,
                **{group: {name: z for name in names} for group, names in self.terms.items()}}
        if self.mixture:
            sums.update(usage=jnp.zeros((self.k,), F32), confidence=z, entropy=z, winners=jnp.zeros((self.k,), F32))
        if self.gumbel:
            sums["routing_confidence"] = z
        return sums

    def add_to_sums(self, sums, fwd, terms, labeled, valid, objective, active_mask) -> dict:
        """The running sums after one step: per-image terms and mixture statistics summed over the valid
        images, labeled terms over the labeled ones, per-batch terms once."""
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
            out["entropy"] = sums["entropy"] + jnp.sum(entropy(r) * valid)
            out["winners"] = sums["winners"] + jnp.sum(winner_onehot(r, active_mask) * v, axis=0)
        if self.gumbel:
            out["routing_confidence"] = sums["routing_confidence"] + jnp.sum(jnp.max(fwd.soft_sample, -1) * valid)
        return out

    # --- the evaluation step --------------------------------------------------------------------

    def _evaluation_forward(self, params, x, active_mask, temperature, key):
        model = self._model(params)
        return model, model(x, RouteCtx.evaluation(self.cfg, active_mask, temperature), train=False, key=key)

    def evaluate(self, params, tau_counts, x, y, valid, active_mask, temperature, chunk_index, eval_key):
        """Evaluation mode on one chunk of a split → per-image arrays (the host reduces them once per
        split): the loss terms, the selected latent, responsibilities, predicted labels, σ̂ statistics."""
        key = jax.random.fold_in(eval_key, chunk_index)
        x, y, valid = self.shard((x, y, valid))
        model, fwd = self._evaluation_forward(params, x, active_mask, temperature, key)
        terms = compute_terms(self.cfg, model, fwd, x, y, valid, self._tau(tau_counts))
        out = {"image": terms.image, "labeled": terms.labeled, "step": terms.step, "z_selected": selected_latent(fwd)}
        if self.mixture:
            out["responsibilities"] = fwd.responsibilities
        predicted = label_predictions(model.spec, fwd, tau_counts)
        if self.use_tau:
            out.update(tau_pred=predicted["predicted_label"], tau_certainty=predicted["certainty"],
                       tau_ood=predicted["ood_score"])
        elif predicted:
            out.update(class_pred=predicted["predicted_label"], class_certainty=predicted["certainty"])
        if self.hetero:
            m = self.cfg.model
            out["sigma"] = sigma_statistics(blended_sigma(fwd), x, fwd.recon, m.sigma_min, m.sigma_max)
        return out

    # --- the diagnostics step -------------------------------------------------------------------

    def diagnostics(self, params, tau_counts, x, fixed_x, active_mask, temperature, chunk_index, eval_key):
        """Per-image arrays for the diagnostics file, and the fixed images' reconstructions and, for
        component-decoding priors, every component's mean image."""
        key = jax.random.fold_in(eval_key, chunk_index)
        _, fwd = self._evaluation_forward(params, self.shard(x), active_mask, temperature, key)
        out = {"z_mean": fwd.z_mean}
        if fwd.kl_per_component is not None:
            out["kl_per_component"] = fwd.kl_per_component
        if self.gumbel:  # one training-mode soft Gumbel sample ŝ at the last temperature
            gumbel_key = jax.random.fold_in(key, _DIAGNOSTICS_GUMBEL_STREAM)
            out["routing_sampled"] = gumbel_softmax_sample(mask_logits(fwd.logits, active_mask), active_mask,
                                                           temperature, gumbel_key)
        if self.hetero:
            out["sigma"] = blended_sigma(fwd)
        out.update(self._fixed_image_diagnostics(params, fixed_x, active_mask, temperature, key))
        return out

    def _fixed_image_diagnostics(self, params, fixed_x, active_mask, temperature, key) -> dict:
        model, fwd = self._evaluation_forward(params, fixed_x, active_mask, temperature, key)
        out = {"fixed_recon": fwd.recon}
        if self.hetero:
            out["fixed_sigma"] = blended_sigma(fwd)
        if self.comp_dec:
            means, sigma = model.decode_every_component(fwd.z_mean)
            out.update(fixed_percomp=means, fixed_weights=fwd.routing, fixed_resp=fwd.responsibilities)
            if sigma is not None:
                out["fixed_percomp_sigma"] = sigma
        return out
