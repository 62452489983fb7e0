"""The last stage of `mixvae validate`: build the model and trace one train step abstractly.

Nothing is computed: ``nnx.eval_shape`` builds the model, ``jax.eval_shape`` traces one optimiser step
and one forward pass on inputs of the real batch shape. Wiring and shape errors surface in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class WiringError(Exception):
    """``model wiring error: …`` (exit 2)."""


@dataclass
class AbstractReport:
    num_params: int
    loss: str                   # 'f32[]'
    num_terms: int


def _shape(x) -> str:
    return f"{str(x.dtype).replace('float', 'f')}{list(x.shape)}"


def check(cfg, image_shape: tuple[int, int, int], num_labeled: int, n_train: int | None = None) -> AbstractReport:
    """Trace one train step on abstract inputs; raise ``WiringError`` naming every shape problem."""
    try:
        obj, fwd, terms, params = _trace_one_step(cfg, tuple(image_shape), num_labeled, n_train)
    except Exception as exc:  # a shape or wiring problem inside the model
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WiringError(f"model wiring error: {msg}") from None
    problems = _problems(cfg, tuple(image_shape), num_labeled, obj, fwd, terms)
    if problems:
        raise WiringError("model wiring error: " + "; ".join(problems))
    n_params = int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
    got = set(terms.image) | set(terms.labeled) | set(terms.step)
    return AbstractReport(num_params=n_params, loss=_shape(obj), num_terms=len(got))


def _abstract(tree):
    """Shapes and dtypes only."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), tree)


def _trace_one_step(cfg, image_shape, num_labeled: int, n_train: int | None):
    """→ (objective, forward pass, loss terms, parameters) of one optimiser step, all abstract."""
    from mixvae.model import MixVAE
    from mixvae.train.schedule import example_schedule
    from mixvae.train.step import Functions, TrainState, make_optimizer

    b, k = cfg.training.batch_size, cfg.model.num_components
    model = nnx.eval_shape(lambda: MixVAE(cfg, image_shape, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(model)
    tx = make_optimizer(cfg, params)
    tau = (jax.ShapeDtypeStruct((k, cfg.model.num_classes), jnp.float32) if cfg.model.use_tau_classifier
           else jax.ShapeDtypeStruct((1, 1), jnp.float32))
    state = TrainState(params=params, opt_state=jax.eval_shape(tx.init, params), tau_counts=tau,
                       step=jax.ShapeDtypeStruct((), jnp.int32))
    fns = Functions(cfg, graphdef, tx, image_shape=image_shape, n_train=n_train or b, num_labeled=num_labeled)
    x = jax.ShapeDtypeStruct((b, *image_shape), jnp.float32)
    y = jax.ShapeDtypeStruct((b,), jnp.int32)
    valid = jax.ShapeDtypeStruct((b,), jnp.float32)
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))

    def one_step(state, x, y, valid, sched, key):
        (obj, (fwd, terms, _)), grads = jax.value_and_grad(fns.objective, has_aux=True)(
            state.params, x, y, y, x if fns.neighbours else None, valid, sched, key,
            state.tau_counts)  # y stands in for the warm-start targets, x for the neighbours
        tx.update(grads, state.opt_state, state.params)
        return obj, fwd, terms

    obj, fwd, terms = jax.eval_shape(one_step, state, x, y, valid, _abstract(example_schedule(k)), key)
    return obj, fwd, terms, params


def _problems(cfg, image_shape, num_labeled: int, obj, fwd, terms) -> list[str]:
    """Every way the traced step differs from what the configuration asks for."""
    from mixvae.model import enabled_terms

    b, k = cfg.training.batch_size, cfg.model.num_components
    h, w, c = image_shape
    problems = []
    if obj.shape != () or obj.dtype != jnp.float32:
        problems.append(f"the loss is {_shape(obj)}, expected f32[]")
    expected = {name for name, reason in enabled_terms(cfg, num_labeled).items() if reason is None}
    got = set(terms.image) | set(terms.labeled) | set(terms.step)
    if expected - got:
        problems.append(f"enabled loss terms missing from the step: {', '.join(sorted(expected - got))}")
    for name, v in list(terms.image.items()) + list(terms.labeled.items()):
        if v.shape != (b,):
            problems.append(f"{name} is {_shape(v)} per batch, expected [{b}]")
    for name, v in terms.step.items():
        if v.shape != ():
            problems.append(f"{name} is {_shape(v)}, expected a scalar")
    if fwd.responsibilities is not None and fwd.responsibilities.shape != (b, k):
        problems.append(f"responsibilities are {_shape(fwd.responsibilities)}, expected [{b}, {k}]")
    if fwd.recon.shape != (b, h, w, c):
        problems.append(f"the decoder produces {_shape(fwd.recon)} but the images are [{b}, {h}, {w}, {c}] "
                        f"({layer_summary(cfg, image_shape)})")
    return problems


def layer_summary(cfg, image_shape) -> str:
    m = cfg.model
    h, w, c = image_shape
    enc = (f"conv {list(m.conv_channels)} then dense {list(m.hidden_dims)}" if m.encoder_type == "conv"
           else f"dense {h * w * c}→{'→'.join(map(str, m.hidden_dims))}")
    dec = (f"dense {'→'.join(map(str, reversed(m.hidden_dims)))} then transposed conv "
           f"{list(reversed(m.conv_channels))}" if m.decoder_type == "conv"
           else f"dense {'→'.join(map(str, reversed(m.hidden_dims)))}→{h * w * c}")
    return f"encoder {enc}; decoder {dec}"
