"""The report's array inputs: ``diagnostics/eval.npz`` (per-image arrays of the summary split at the best
epoch, reconstructions of fixed images, every component's mean image) and ``diagnostics/history.npz``
(π, training and validation usage and the active mask of every epoch).
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from mixvae.train.evaluation import SplitResult, mixture_weights, pad_to, tau_and_free

F32 = np.float32
MAX_IMAGES = 10_000        # per-image arrays keep at most this many images (a random subset)
NUM_FIXED = 8              # fixed images reconstructed for the report
NUM_PER_COMPONENT = 6      # of which this many also show every component's mean image
MAX_SIGMA_VALUES = 100_000
HISTORY_FIELDS = ("epoch", "pi", "usage_train", "usage_val", "active_mask")


# --- history.npz -----------------------------------------------------------------------------------

def new_history() -> dict[str, list]:
    return {name: [] for name in HISTORY_FIELDS}


def record_epoch(history: dict[str, list], n: int, pi, sums: dict, val: SplitResult, active_mask, k: int) -> None:
    """Append epoch n: π (uniform without learned weights), mean training and validation usage, mask."""
    history["epoch"].append(n)
    history["pi"].append(pi if pi is not None else np.full(k, 1.0 / k))
    usage_t = np.asarray(sums["usage"]) / max(float(sums["n_images"]), 1.0) if "usage" in sums else np.zeros(k)
    usage_v = val.per_image["responsibilities"].mean(0) if "responsibilities" in val.per_image else np.zeros(k)
    history["usage_train"].append(usage_t)
    history["usage_val"].append(usage_v)
    history["active_mask"].append(np.asarray(active_mask))


def history_to_host(history: dict[str, list]) -> dict[str, list]:
    """Plain lists, for the ``last`` checkpoint."""
    return {k: [np.asarray(v).tolist() for v in vals] for k, vals in history.items()}


def history_from_host(host: dict[str, list]) -> dict[str, list]:
    return {k: [np.asarray(v) for v in vals] for k, vals in host.items()}


def save_history(path: Path, history: dict[str, list]) -> None:
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in history.items()})


# --- eval.npz --------------------------------------------------------------------------------------

class EvalDiagnostics:
    """Writes ``eval.npz`` with the compiled diagnostics function (set once compiled)."""

    def __init__(self, cfg, graphdef, chunk: int, key):
        self.cfg, self.graphdef, self.chunk, self.key = cfg, graphdef, chunk, key
        self.compiled = None

    def write(self, path: Path, params, tau_counts, mask, x, y, res: SplitResult, temperature: float) -> None:
        chosen, fixed = self._choose(len(x), x)
        outs = self._run(params, tau_counts, np.asarray(x[chosen], F32), fixed, mask, temperature)
        arrays = {"index": chosen.astype(np.int64), "labels": y[chosen].astype(np.int64)}
        arrays.update(self._per_image(outs, res, chosen))
        arrays.update(self._fixed(outs[0], fixed))
        arrays.update(self._model_arrays(params, tau_counts, mask))
        if self.cfg.model.use_tau_classifier:
            arrays.update({name: res.per_image[name][chosen] for name in ("tau_pred", "tau_certainty", "tau_ood")})
        if "class_pred" in res.per_image:
            arrays["class_pred"] = res.per_image["class_pred"][chosen]
        arrays["recon_error"] = res.per_image["image"]["loss.recon"][chosen] / self.cfg.model.recon_weight
        np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})

    def _choose(self, n: int, x) -> tuple[np.ndarray, np.ndarray]:
        """The images kept (all, or a random subset of ``MAX_IMAGES``) and the fixed images, zero-padded."""
        if n > MAX_IMAGES:
            pick = jax.random.choice(jax.random.fold_in(self.key, 2), n, (MAX_IMAGES,), replace=False)
            chosen = np.sort(np.asarray(pick))
        else:
            chosen = np.arange(n)
        fixed_idx = np.asarray(jax.random.permutation(jax.random.fold_in(self.key, 1), n))[:NUM_FIXED]
        return chosen, pad_to(np.asarray(x[fixed_idx], F32), NUM_FIXED)

    def _run(self, params, tau_counts, xs_all, fixed, mask, temperature) -> list[dict]:
        """The diagnostics function over the kept images, chunk by chunk, fetched once."""
        outs = []
        for i, start in enumerate(range(0, len(xs_all), self.chunk)):
            xs = pad_to(xs_all[start:start + self.chunk], self.chunk)
            outs.append(self.compiled(params, tau_counts, xs, fixed, mask, np.float32(temperature), np.int32(i),
                                      self.key))
        return jax.device_get(outs)

    @staticmethod
    def _per_image(outs: list[dict], res: SplitResult, chosen: np.ndarray) -> dict[str, np.ndarray]:
        nsel = len(chosen)
        arrays = {"z_mean": np.concatenate([o["z_mean"] for o in outs])[:nsel],
                  "z_mean_selected": res.per_image["z_selected"][chosen]}
        if "responsibilities" in res.per_image:
            arrays["responsibilities"] = res.per_image["responsibilities"][chosen]
        for name in ("routing_sampled", "kl_per_component"):
            if name in outs[0]:
                arrays[name] = np.concatenate([o[name] for o in outs])[:nsel]
        if "sigma" in outs[0]:
            sig = np.concatenate([np.asarray(o["sigma"]).reshape(len(o["sigma"]), -1) for o in outs])[:nsel]
            arrays["sigma"] = sig.reshape(-1)[:MAX_SIGMA_VALUES]
        return arrays

    def _fixed(self, first: dict, fixed: np.ndarray) -> dict[str, np.ndarray]:
        """Reconstructions of the fixed images and, for component decoding, every component's mean image."""
        recon = first["fixed_recon"]
        arrays = {"recon_images": fixed,
                  "recon_means": np.clip(recon, 0, 1) if self.cfg.model.reconstruction_loss == "bce" else recon}
        if "fixed_sigma" in first:
            arrays["recon_sigma"] = first["fixed_sigma"]
        if "fixed_percomp" in first:
            p = NUM_PER_COMPONENT
            arrays.update(percomp_images=fixed[:p], percomp_means=first["fixed_percomp"][:p],
                          percomp_weights=first["fixed_weights"][:p], percomp_resp=first["fixed_resp"][:p])
            if "fixed_percomp_sigma" in first:
                arrays["percomp_sigma"] = first["fixed_percomp_sigma"][:p]
        return arrays

    def _model_arrays(self, params, tau_counts, mask) -> dict[str, np.ndarray]:
        """Component embeddings, π, the active mask and the τ map of the restored model."""
        arrays = {}
        model = nnx.merge(self.graphdef, params)
        if getattr(model, "embeddings", None) is not None:
            arrays["embeddings"] = np.asarray(model.embeddings[...])
        pi = mixture_weights(self.cfg, self.graphdef, params)
        if pi is not None:
            arrays["pi"] = pi
        arrays["active_mask"] = np.asarray(mask)
        if self.cfg.model.use_tau_classifier:
            arrays["tau_counts"] = np.asarray(tau_counts)
            arrays["tau"], arrays["tau_free"] = tau_and_free(self.cfg, tau_counts, mask)
        return arrays
