"""The training loop: epochs, schedules, evaluation, early stopping, curriculum, NaN guard,
checkpoints, best-epoch restore, final evaluation and diagnostics.

The loop knows nothing about MLflow: it reports through a ``RunWriter`` (``mixvae.tracking.writer``).
Host work per epoch is one ``device_get`` of the epoch sums, one of the validation outputs, a few
NumPy reductions and one ``writer.log_epoch`` call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixvae import __version__
from mixvae.config import config_hash, to_yaml
from mixvae.metrics import compute as mc
from mixvae.metrics import keys as mk
from mixvae.model import MixVAE
from mixvae.model import tau as tau_lib
from mixvae.model.priors import init_pseudo_inputs, warm_start_clusters
from mixvae.train import checkpoint
from mixvae.train.curriculum import Curriculum
from mixvae.train.step import (STREAM_EVAL, STREAM_INIT, STREAM_SHUFFLE, STREAM_STEPS, Functions, Schedule,
                               TrainState, make_optimizer)

F32 = np.float32


class NonFiniteLoss(RuntimeError):
    pass


class Interrupted(Exception):
    pass


def versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {"mixvae": __version__}
    for pkg in ("jax", "flax", "optax", "mlflow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


def rho(n: int, length: int) -> float:
    """ρ(n, N) = min(1, n / N), the linear warm-up factor (1 when N = 0)."""
    return 1.0 if length == 0 else min(1.0, n / length)


def temperature(cfg, n: int) -> float:
    """The Gumbel temperature T_n of epoch n, annealed linearly."""
    m = cfg.model
    if m.gumbel_temperature_anneal_epochs == 0:
        return m.gumbel_temperature
    frac = min(1.0, (n - 1) / m.gumbel_temperature_anneal_epochs)
    return m.gumbel_temperature + (m.gumbel_temperature_min - m.gumbel_temperature) * frac


@dataclass
class SplitResult:
    metrics: dict[str, float]
    status: dict[str, dict]                 # skipped/failed metrics of this split
    per_image: dict[str, np.ndarray]
    acc_method: str | None = None


@dataclass
class TrainResult:
    status: str                             # FINISHED, FAILED, KILLED
    reason: str | None
    epochs_completed: int
    best_epoch: int
    summary: dict | None = None             # summary.json content (None when killed)
    summary_metrics: dict[str, float] = field(default_factory=dict)
    weights_path: Path | None = None
    input_example: np.ndarray | None = None
    stopped_early: bool = False
    stop_message: str = ""


class Trainer:
    """One run's model, compiled functions and state."""

    def __init__(self, loaded, ds, writer, console, *, run_dir: Path, t_start: float | None = None):
        self.loaded = loaded
        self.cfg = cfg = loaded.config
        self.ds = ds
        self.writer = writer
        self.console = console
        self.run_dir = Path(run_dir)
        self.t_start = t_start or time.perf_counter()
        m, t = cfg.model, cfg.training
        self.k = m.num_components
        self.num_labeled = ds.n_labeled
        self.root = jax.random.PRNGKey(t.seed)
        self.keys = {name: jax.random.fold_in(self.root, s) for name, s in
                     (("init", STREAM_INIT), ("shuffle", STREAM_SHUFFLE), ("steps", STREAM_STEPS),
                      ("eval", STREAM_EVAL))}
        # Model and optimiser.
        model = MixVAE(cfg, ds.image_shape, rngs=nnx.Rngs(params=self.keys["init"]))
        if m.prior_type == "vamp":
            model.set_pseudo_inputs(init_pseudo_inputs(cfg, ds.train_x))
        self.graphdef, params = nnx.split(model)
        self.tx = make_optimizer(cfg, params)
        tau_counts = (jnp.full((self.k, m.num_classes), m.tau_smoothing_alpha, jnp.float32)
                      if m.use_tau_classifier else jnp.zeros((1, 1), jnp.float32))
        self.state = TrainState(params=params, opt_state=self.tx.init(params), tau_counts=tau_counts,
                                step=jnp.zeros((), jnp.int32))
        self.fns = Functions(cfg, self.graphdef, self.tx, image_shape=ds.image_shape, n_train=ds.n_train,
                             num_labeled=self.num_labeled)
        # Device-resident data.
        self.train_x = jnp.asarray(ds.train_x)
        self.train_y = jnp.asarray(ds.train_y)
        # Warm-start clustering a_b of every training image (zeros, unused, when cluster_init is 'none').
        self.train_c = jnp.asarray(warm_start_clusters(cfg, ds.train_x) if self.fns.cluster_init
                                   else np.zeros(ds.n_train, np.int32))
        largest = max(ds.n_val, ds.n_test)
        self.chunk = int(min(t.eval_batch_size, max(8, -(-largest // 8) * 8)))
        # Loop state.
        self.curriculum = Curriculum.from_config(cfg)
        self.epoch = 0
        self.best_value = math.inf if self.monitor_mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.best = None          # snapshot: params, tau counts, active mask
        self.best_k_active = self.curriculum.k_active
        self.history: dict[str, list] = {"epoch": [], "pi": [], "usage_train": [], "usage_val": [],
                                         "active_mask": []}
        self.metric_history: list[dict[str, float]] = []
        self.compile_time = 0.0
        self.epoch_time_inside = 0.0
        self.steps_done = 0
        self.compiled: dict[str, Any] = {}
        self.kick_epochs_total = 0
        self.last_temperature = m.gumbel_temperature
        self.timings: dict[str, float] = {}      # wall seconds: epochs, final_evaluation

    # --- properties ---------------------------------------------------------------------------------

    @property
    def monitor(self) -> str:
        return self.cfg.training.monitor

    @property
    def monitor_mode(self) -> str:
        mode = self.cfg.training.monitor_mode
        return mk.direction(self.cfg.training.monitor) if mode == "auto" else mode

    # --- compilation -------------------------------------------------------------------

    def _example_schedule(self) -> Schedule:
        z = np.float32(1.0)
        return Schedule(kl_z_scale=z, kl_c_scale=z, temperature=z, straight_through=z,
                        active_mask=np.ones(self.k, F32), kick_bias=np.zeros(self.k, F32), cluster_init_scale=z)

    def _eval_inputs(self):
        h, w, c = self.ds.image_shape
        x = np.zeros((self.chunk, h, w, c), F32)
        return x, np.zeros(self.chunk, np.int32), np.zeros(self.chunk, F32)

    def compile(self) -> float:
        """Ahead-of-time compile the epoch, evaluation and diagnostics functions, once each."""
        t0 = time.perf_counter()
        fns = self.fns
        if fns.host_loop:
            self.zero_sums = jax.device_get(jax.eval_shape(fns.zero_sums))
            self.zero_sums = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), self.zero_sums)
            self.compiled["epoch"] = jax.jit(fns.epoch_step, donate_argnums=(0, 1)).lower(
                self.state, self.zero_sums, self.train_x, self.train_y, self.train_c, self._example_schedule(),
                np.int32(1), np.int32(0), self.keys["shuffle"], self.keys["steps"]).compile()
        else:
            self.compiled["epoch"] = jax.jit(fns.epoch, donate_argnums=(0,)).lower(
                self.state, self.train_x, self.train_y, self.train_c, self._example_schedule(), np.int32(1),
                self.keys["shuffle"], self.keys["steps"]).compile()
        x, y, v = self._eval_inputs()
        self.compiled["eval"] = jax.jit(fns.evaluate).lower(
            self.state.params, self.state.tau_counts, x, y, v, np.ones(self.k, F32), np.float32(1.0),
            np.int32(0), self.keys["eval"]).compile()
        fixed = np.zeros((8, *self.ds.image_shape), F32)
        self.compiled["diagnostics"] = jax.jit(fns.diagnostics).lower(
            self.state.params, self.state.tau_counts, x, fixed, np.ones(self.k, F32), np.float32(1.0),
            np.int32(0), self.keys["eval"]).compile()
        self.compile_time = time.perf_counter() - t0
        return self.compile_time

    # --- schedules -----------------------------------------------------------------------------------

    def schedule(self, n: int, plan) -> tuple[Schedule, dict[str, float]]:
        cfg, m, cur = self.cfg, self.cfg.model, self.cfg.curriculum
        beta = rho(n, m.kl_warmup_epochs)
        kappa = rho(n, m.kl_c_anneal_epochs)
        temp = temperature(cfg, n)
        st = 1.0 if m.use_straight_through_gumbel else 0.0
        if plan.kick:
            kappa *= cur.kick.regularizer_scale
            if m.use_gumbel_softmax:
                temp = cur.kick.gumbel_temperature
            if cur.kick.disable_straight_through:
                st = 0.0
        gamma = 1.0 - rho(n - 1, m.cluster_init_epochs)  # γ: 1 in epoch 1, falling linearly to 0
        sched = Schedule(kl_z_scale=np.float32(beta), kl_c_scale=np.float32(kappa), temperature=np.float32(temp),
                         straight_through=np.float32(st), active_mask=plan.active_mask, kick_bias=plan.kick_bias,
                         cluster_init_scale=np.float32(gamma))
        logged = {}
        if mk.KEYS["training.gumbel_temperature"].applies(cfg, self.num_labeled) is None:
            logged["training.gumbel_temperature"] = float(temp)
        if mk.KEYS["training.kl_z_scale"].applies(cfg, self.num_labeled) is None:
            logged["training.kl_z_scale"] = float(beta)
        if mk.KEYS["training.cluster_init_scale"].applies(cfg, self.num_labeled) is None:
            logged["training.cluster_init_scale"] = float(gamma)
        if mk.KEYS["training.kl_c_scale"].applies(cfg, self.num_labeled) is None:
            logged["training.kl_c_scale"] = float(kappa)
        return sched, logged

    # --- metrics from sums ---------------------------------------------------------------------------

    def train_metrics(self, sums: dict, active_mask: np.ndarray) -> dict[str, float]:
        n = max(float(sums["n_images"]), 1.0)
        steps = max(float(sums["n_steps"]), 1.0)
        out = {k: float(v) / n for k, v in sums["image"].items()}
        out.update({k: float(v) / max(float(sums["n_labeled"]), 1.0) for k, v in sums["labeled"].items()})
        out.update({k: float(v) / steps for k, v in sums["step"].items()})
        # loss.total: the model's terms only, comparable with validation (the warm-start aid is logged apart).
        out["loss.total"] = float(sum(v for k, v in out.items() if k != "loss.cluster_init"))
        out["loss.objective"] = float(sums["loss.objective"]) / steps
        if "usage" in sums:
            usage = np.asarray(sums["usage"]) / n
            a = active_mask.astype(bool)
            out.update(mc.usage_metrics(usage, active_mask))
            out["mixture.dead_components"] = float(np.sum(a & (np.asarray(sums["winners"]) == 0)))
            out["mixture.responsibility_confidence_mean"] = float(sums["confidence"]) / n
            out["mixture.component_entropy"] = float(sums["entropy"]) / n
        if "routing_confidence" in sums:
            out["mixture.routing_confidence_mean"] = float(sums["routing_confidence"]) / n
        return out

    def pi(self, params) -> np.ndarray | None:
        """π = softmax(pi_logits); None without components. A fixed π stays uniform, so no lookup is needed."""
        if not self.cfg.model.is_component_decoding:
            return None
        if not self.cfg.model.learnable_pi:
            return np.full(self.k, 1.0 / self.k)
        model = nnx.merge(self.graphdef, params)
        if getattr(model, "pi_logits", None) is None:
            return None
        logits = np.asarray(model.pi_logits[...], np.float64)
        e = np.exp(logits - logits.max())
        return (e / e.sum()).astype(np.float64)

    def evaluate(self, params, tau_counts, x: np.ndarray, y: np.ndarray, active_mask: np.ndarray,
                 temp: float) -> SplitResult:
        """Evaluation mode over a whole split: chunks dispatched asynchronously, one fetch at the end."""
        n = len(x)
        outs = []
        for i, start in enumerate(range(0, n, self.chunk)):
            xs, ys = x[start:start + self.chunk], y[start:start + self.chunk]
            pad = self.chunk - len(xs)
            valid = np.ones(self.chunk, F32)
            if pad:
                xs = np.concatenate([xs, np.zeros((pad, *xs.shape[1:]), F32)])
                ys = np.concatenate([ys, np.full(pad, -1, np.int32)])
                valid[-pad:] = 0
            outs.append(self.compiled["eval"](params, tau_counts, xs, ys.astype(np.int32), valid, active_mask,
                                              np.float32(temp), np.int32(i), self.keys["eval"]))
        outs = jax.device_get(outs)  # the one host transfer of the split
        per_image = _concat(outs, n)
        return self._split_metrics(per_image, outs[0]["step"], y, active_mask, params, tau_counts)

    def _split_metrics(self, per, step_terms, y, active_mask, params, tau_counts) -> SplitResult:
        m = self.cfg.model
        n = len(y)
        metrics: dict[str, float] = {}
        status: dict[str, dict] = {}
        for k, v in per["image"].items():
            metrics[k] = float(np.sum(v)) / n
        labeled = y >= 0
        for k, v in per["labeled"].items():
            if labeled.any():
                metrics[k] = float(np.sum(v[labeled])) / labeled.sum()
            else:
                status[k] = {"status": "skipped", "reason": "the split has no labels"}
        for k, v in step_terms.items():
            metrics[k] = float(v)
        if "loss.diversity" in metrics and "responsibilities" in per:  # H of the split's mean usage
            metrics["loss.diversity"] = float(m.component_diversity_weight *
                                              mc.entropy(per["responsibilities"].mean(0)))
        if "loss.usage_balance" in metrics and "responsibilities" in per:  # KL of the split's mean usage to π^A
            p_hat = per["responsibilities"].mean(0)
            pi = self.pi(params)
            pi = np.full(self.k, 1.0 / self.k) if pi is None else pi
            a = active_mask.astype(bool)
            pi_a = pi[a] / pi[a].sum()
            kl = -float(mc.entropy(p_hat[a])) - float(np.sum(p_hat[a] * np.log(pi_a)))  # KL = −H(p̂) − Σ p̂ log π
            metrics["loss.usage_balance"] = float(m.usage_balance_weight * kl)
        metrics["loss.total"] = float(sum(v for k, v in metrics.items() if k.startswith("loss.")))
        has_labels = bool(labeled.any())

        def attempt(keys, fn):
            try:
                metrics.update(fn())
            except Exception as exc:  # a failed metric never fails the run
                for key in keys:
                    status[key] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}

        acc_method = None
        if m.is_mixture_based:
            r = per["responsibilities"]
            attempt(["mixture.K_eff"], lambda: mc.mixture_metrics(r, active_mask))
            if m.learnable_pi:
                pi = self.pi(params)
                attempt(["mixture.pi_entropy"], lambda: mc.pi_metrics(pi, active_mask))
            label_keys = ["clustering.nmi", "clustering.ari", "clustering.acc", "mixture.specialization"]
            if has_labels:
                yl, rl = y[labeled], r[labeled]

                def clustering():
                    out, method = mc.clustering_metrics(rl, yl, active_mask, m.num_classes)
                    out["mixture.specialization"] = mc.specialization(rl, yl, active_mask, m.num_classes)
                    nonlocal acc_method
                    acc_method = method
                    return out
                attempt(label_keys, clustering)
            else:
                for key in label_keys:
                    status[key] = {"status": "skipped", "reason": "the split has no labels"}
        attempt(["latent.active_units"], lambda: {"latent.active_units": mc.active_units(per["z_selected"])})
        if m.use_tau_classifier:
            counts = np.asarray(tau_counts)
            tau = counts / counts.sum(axis=1, keepdims=True)
            free = np.asarray(tau_lib.free_channels(counts, m.tau_smoothing_alpha, m.tau_free_count_threshold,
                                                    active_mask)).astype(bool)
            attempt(["tau.accuracy"], lambda: mc.tau_metrics(
                tau, free, active_mask, per["tau_pred"][labeled] if has_labels else per["tau_pred"],
                per["tau_certainty"][labeled] if has_labels else per["tau_certainty"],
                per["tau_ood"], y[labeled] if has_labels else None))
            if not has_labels:
                for key in ("tau.accuracy", "tau.calibration_error"):
                    status[key] = {"status": "skipped", "reason": "the split has no labels"}
        if "class_pred" in per:
            if has_labels:
                metrics["classifier.accuracy"] = float(np.mean(per["class_pred"][labeled] == y[labeled]))
            else:
                status["classifier.accuracy"] = {"status": "skipped", "reason": "the split has no labels"}
        if "sigma" in per:
            s = per["sigma"]
            count = float(np.sum(s["count"]))
            mean = float(np.sum(s["sum"])) / count
            var = max(float(np.sum(s["sumsq"])) / count - mean * mean, 0.0)
            pixels = float(n * np.prod(self.ds.image_shape))
            metrics.update({
                "uncertainty.sigma_mean": mean, "uncertainty.sigma_std": math.sqrt(var),
                "uncertainty.sigma_saturation": float(np.sum(s["saturated"])) / count,
                "uncertainty.calibration_error": abs(float(np.sum(s["z2"])) / pixels - 1.0)})
        return SplitResult(metrics, status, per, acc_method)

    # --- the loop --------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        cfg, t = self.cfg, self.cfg.training
        console = self.console
        started = time.perf_counter()
        first_epoch = self.epoch + 1
        reason = None
        stopped_early = False
        stop_message = ""
        try:
            for n in range(first_epoch, t.max_epochs + 1):
                t_epoch = time.perf_counter()
                plan = self.curriculum.plan(n)
                sched, sched_logged = self.schedule(n, plan)
                self.last_temperature = temperature(cfg, n)
                t_in = time.perf_counter()
                new_state, sums = self.run_epoch(sched, n)
                sums = jax.device_get(sums)  # the one host read of the epoch
                inside = time.perf_counter() - t_in
                train = self.train_metrics(sums, plan.active_mask)
                val = self.evaluate(new_state.params, new_state.tau_counts, self.ds.val_x, self.ds.val_y,
                                    plan.active_mask, self.last_temperature)
                bad = {f"train/{k}": v for k, v in train.items() if k.startswith("loss.") and not math.isfinite(v)}
                bad.update({f"val/{k}": v for k, v in val.metrics.items() if k.startswith("loss.")
                            and not math.isfinite(v)})
                if bad:
                    a = self.steps_done
                    b = a + self.fns.steps - 1
                    what = ", ".join(f"{k.split('/', 1)[1]}={v}" for k, v in list(bad.items())[:4])
                    raise NonFiniteLoss(f"non-finite loss at epoch {n} (global steps {a}–{b}): {what}")
                # The epoch is good: commit its state.
                self.state = new_state
                self.epoch = n
                self.steps_done += self.fns.steps
                self.epoch_time_inside += inside
                if plan.kick:
                    self.kick_epochs_total += 1
                # Curriculum decisions after validation.
                events = []
                if self.curriculum.enabled:
                    mon = self.curriculum_monitor_value(train, val.metrics)
                    events = self.curriculum.observe(n, mon)
                # Early stopping.
                value = val.metrics.get(self.monitor.split("/", 1)[1], math.nan)
                improved = (value < self.best_value - t.min_delta) if self.monitor_mode == "min" else \
                    (value > self.best_value + t.min_delta)
                if improved or self.best is None:
                    self.best_value, self.best_epoch, self.wait = value, n, 0
                    self.snapshot(plan.active_mask)
                else:
                    self.wait += 1
                if any(e["event"] == "unlock" for e in events):
                    self.wait = 0
                # History and logging: one call per epoch.
                logged = {f"train/{k}": v for k, v in train.items()}
                logged.update({f"train/{k}": v for k, v in sched_logged.items()})
                logged["train/training.steps_per_sec"] = self.fns.steps / max(inside, 1e-9)
                if self.curriculum.enabled:
                    logged["train/curriculum.k_active"] = float(plan.k_active)
                    logged["train/curriculum.unlocked"] = float(plan.unlocked)
                    logged["train/curriculum.kick_active"] = float(plan.kick)
                logged.update({f"val/{k}": v for k, v in val.metrics.items()})
                self.record_history(n, sums, val, plan.active_mask)
                epoch_time = time.perf_counter() - t_epoch
                logged["train/training.epoch_time_sec"] = epoch_time
                self.metric_history.append(logged)
                self.writer.log_epoch(n, logged)
                self.save_last()
                if n % t.checkpoint_every == 0 and cfg.tracking.log_checkpoints:
                    self.writer.log_artifacts(self.ckpt_dir / "last", "checkpoints/last")
                self.writer.check()
                for e in events:
                    console.print(self.curriculum.describe(e))
                self.progress(n, started, train, val.metrics, epoch_time)
                if t.patience is not None and self.wait >= t.patience:
                    stopped_early = True
                    stop_message = (f"early stop at epoch {n}: {self.monitor} did not improve by more than "
                                    f"{t.min_delta:g} for {t.patience} epochs; restored epoch {self.best_epoch}")
                    break
        except KeyboardInterrupt:
            console.end_bar()  # the caller uploads the last checkpoint and ends the run
            return TrainResult("KILLED", f"interrupted at epoch {self.epoch + 1}", self.epoch, self.best_epoch)
        except NonFiniteLoss as exc:
            console.end_bar()
            reason = str(exc)
        console.end_bar()
        if not stop_message and reason is None:
            stop_message = f"reached max_epochs ({t.max_epochs}); restored epoch {self.best_epoch}"
        self.timings["epochs"] = time.perf_counter() - started
        t_final = time.perf_counter()
        result = self.finish(reason, stopped_early, stop_message)
        self.timings["final_evaluation"] = time.perf_counter() - t_final
        return result

    def run_epoch(self, sched: Schedule, n: int):
        """Epoch n: one call of the scanned epoch, or one call per step when the host drives it."""
        fn = self.compiled["epoch"]
        if not self.fns.host_loop:
            return fn(self.state, self.train_x, self.train_y, self.train_c, sched, np.int32(n),
                      self.keys["shuffle"], self.keys["steps"])
        state, sums = self.state, self.zero_sums
        for i in range(self.fns.steps):  # dispatched asynchronously; nothing is fetched until the end
            state, sums = fn(state, sums, self.train_x, self.train_y, self.train_c, sched, np.int32(n),
                             np.int32(i), self.keys["shuffle"], self.keys["steps"])
        return state, sums

    def curriculum_monitor_value(self, train: dict, val: dict) -> float:
        key = self.cfg.curriculum.unlock.monitor
        where, name = key.split("/", 1)
        return float((train if where == "train" else val).get(name, math.nan))

    def snapshot(self, active_mask: np.ndarray) -> None:
        """An explicit copy of the best parameters, τ counts and mask (the live buffers are donated)."""
        self.best = {"params": jax.tree.map(np.array, jax.device_get(self.state.params)),
                     "tau_counts": np.array(self.state.tau_counts),
                     "active_mask": np.array(active_mask)}
        self.best_k_active = int(active_mask.sum())
        self.save_best()

    def record_history(self, n, sums, val: SplitResult, active_mask) -> None:
        k = self.k
        pi = self.pi(self.state.params)
        self.history["epoch"].append(n)
        self.history["pi"].append(pi if pi is not None else np.full(k, 1.0 / k))
        usage_t = np.asarray(sums["usage"]) / max(float(sums["n_images"]), 1.0) if "usage" in sums else np.zeros(k)
        usage_v = val.per_image["responsibilities"].mean(0) if "responsibilities" in val.per_image else np.zeros(k)
        self.history["usage_train"].append(usage_t)
        self.history["usage_val"].append(usage_v)
        self.history["active_mask"].append(np.asarray(active_mask))

    def progress(self, n, started, train, val, epoch_time) -> None:
        t = self.cfg.training
        best = f"{self.best_value:.4f}@{self.best_epoch}"
        mon = val.get(self.monitor.split("/", 1)[1], math.nan)
        suffix = f"train {train['loss.total']:.2f}  val {val['loss.total']:.2f}  best {self.best_value:.2f}@{self.best_epoch}"
        if "mixture.K_eff" in val:
            suffix += f"  K_eff {val['mixture.K_eff']:.1f}"
        self.console.bar(n, t.max_epochs, started, "epoch", suffix)
        self.console.epoch_line(
            f"epoch {n}/{t.max_epochs} train/loss.total={train['loss.total']:.4f} "
            f"val/loss.total={val['loss.total']:.4f} monitor={mon:.4f} best={best} time={epoch_time:.2f}s")

    # --- checkpoints ---------------------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def _meta(self) -> dict:
        return {"epoch": self.epoch, "step": self.steps_done, "config_hash": config_hash(self.cfg),
                "versions": versions()}

    def save_last(self) -> None:
        host = {"epoch": self.epoch, "steps_done": self.steps_done, "best_value": _finite(self.best_value),
                "best_epoch": self.best_epoch, "wait": self.wait, "curriculum": self.curriculum.to_dict(),
                "history": {k: [np.asarray(v).tolist() for v in vals] for k, vals in self.history.items()},
                "metric_history": self.metric_history, "kick_epochs_total": self.kick_epochs_total,
                "best_k_active": self.best_k_active, "epoch_time_inside": self.epoch_time_inside,
                "config_yaml": to_yaml(self.cfg)}
        arrays = {"params": self.state.params, "opt_state": self.state.opt_state,
                  "tau_counts": self.state.tau_counts, "root_key": self.root}
        if self.best is not None:
            arrays.update(best_params=self.best["params"], best_tau_counts=self.best["tau_counts"],
                          best_active_mask=self.best["active_mask"])
        checkpoint.save(self.ckpt_dir / "last", arrays, host, self._meta())

    def save_best(self) -> None:
        arrays = {"params": self.best["params"], "tau_counts": self.best["tau_counts"],
                  "active_mask": self.best["active_mask"]}
        host = {"best_epoch": self.best_epoch, "monitor": self.monitor, "monitor_value": _finite(self.best_value)}
        checkpoint.save(self.ckpt_dir / "best", arrays, host, self._meta())

    def upload_last(self) -> None:
        if self.cfg.tracking.log_checkpoints and (self.ckpt_dir / "last").exists():
            self.writer.log_artifacts(self.ckpt_dir / "last", "checkpoints/last")

    def restore_last(self, directory: Path) -> None:
        """Resume: everything of the ``last`` checkpoint back into this trainer."""
        templates = {"params": self.state.params, "opt_state": self.state.opt_state,
                     "tau_counts": self.state.tau_counts, "best_params": self.state.params,
                     "best_tau_counts": self.state.tau_counts, "best_active_mask": np.zeros(self.k, F32)}
        arrays, host, meta = checkpoint.load(directory, templates)
        self.state = TrainState(params=jax.tree.map(jnp.asarray, arrays["params"]),
                                opt_state=jax.tree.map(jnp.asarray, arrays["opt_state"]),
                                tau_counts=jnp.asarray(arrays["tau_counts"]),
                                step=jnp.asarray(host["steps_done"], jnp.int32))
        self.epoch = host["epoch"]
        self.steps_done = host["steps_done"]
        bv = host["best_value"]
        self.best_value = bv if bv is not None else (math.inf if self.monitor_mode == "min" else -math.inf)
        self.best_epoch, self.wait = host["best_epoch"], host["wait"]
        self.curriculum = Curriculum.from_dict(host["curriculum"])
        self.history = {k: [np.asarray(v) for v in vals] for k, vals in host["history"].items()}
        self.metric_history = host["metric_history"]
        self.kick_epochs_total = host["kick_epochs_total"]
        self.best_k_active = host["best_k_active"]
        self.epoch_time_inside = host.get("epoch_time_inside", 0.0)
        if "best_params" in arrays:
            self.best = {"params": arrays["best_params"], "tau_counts": arrays["best_tau_counts"],
                         "active_mask": arrays["best_active_mask"]}

    # --- the end of a run ------------------------------------------------------------------------------

    def finish(self, failure: str | None, stopped_early: bool, stop_message: str) -> TrainResult:
        """Restore the best snapshot, evaluate it, write diagnostics and summary (also after a NaN)."""
        cfg, ds = self.cfg, self.ds
        if self.best is None:
            return TrainResult("FAILED", failure or "no epoch completed", self.epoch, 0,
                               stop_message=stop_message)
        params = self.best["params"]  # host arrays: the compiled functions take them as they are
        tau_counts = jnp.asarray(self.best["tau_counts"])
        mask = np.asarray(self.best["active_mask"], F32)
        temp = self.last_temperature
        val_check = self.evaluate(params, tau_counts, ds.val_x, ds.val_y, mask, temp)
        split = "test" if ds.n_test > 0 else "validation"
        sx, sy = (ds.test_x, ds.test_y) if split == "test" else (ds.val_x, ds.val_y)
        summary_eval = self.evaluate(params, tau_counts, sx, sy, mask, temp) if split == "test" else val_check
        time_sec = time.perf_counter() - self.t_start
        metrics = dict(summary_eval.metrics)
        metrics.update({
            "training.best_epoch": float(self.best_epoch),
            "training.best_monitor_value": float(self.best_value),
            "training.epochs_completed": float(self.epoch),
            "training.stopped_early": float(stopped_early),
            "training.time_sec": float(time_sec),
            "training.compile_time_sec": float(self.compile_time),
            "training.steps_per_sec": float(self.steps_done / max(self.epoch_time_inside, 1e-9)),
            "training.peak_rss_mb": float(peak_rss_mb()),
        })
        if self.curriculum.enabled:
            metrics.update({
                "curriculum.final_k_active": float(self.curriculum.k_active if not self.history["active_mask"]
                                                   else np.sum(self.history["active_mask"][-1])),
                "curriculum.best_k_active": float(mask.sum()),
                "curriculum.unlock_count": float(sum(e["event"] == "unlock" for e in self.curriculum.events)),
                "curriculum.kick_epochs_total": float(self.kick_epochs_total),
                "curriculum.stopped": float(self.curriculum.stopped)})
        metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
        undeclared = [k for k in metrics if not mk.is_declared(k)]
        assert not undeclared, f"undeclared summary keys {undeclared}"
        diag_dir = self.run_dir / "diagnostics"
        diag_dir.mkdir(parents=True, exist_ok=True)
        self.write_diagnostics(params, tau_counts, mask, sx, sy, summary_eval, diag_dir / "eval.npz")
        np.savez_compressed(diag_dir / "history.npz", **{k: np.asarray(v) for k, v in self.history.items()})
        status_map = {k: {"status": "disabled", "reason": r}
                      for k, r in mk.disabled_reasons(cfg, self.num_labeled).items()}
        status_map.update(summary_eval.status)
        per_component = self.per_component(summary_eval, mask, sy)
        summary = {
            "status": "FAILED" if failure else "FINISHED",
            "summary_split": split, "best_epoch": self.best_epoch,
            "metrics": metrics, "metrics_status": status_map,
            "clustering_acc_method": summary_eval.acc_method,
            "per_component": per_component,
            "curriculum": {"stop_reason": self.curriculum.stop_reason if self.curriculum.enabled else "none",
                           "events": self.curriculum.events},
            "data": {"dataset": ds.name, "shape": list(ds.image_shape), "n_train": ds.n_train, "n_val": ds.n_val,
                     "n_test": ds.n_test, "n_labeled": ds.n_labeled, "scale_used": float(ds.scale_used),
                     "digest": ds.digest},
            "warnings": list(self.loaded.warnings) + list(ds.warnings),
            "versions": versions(),
            "val_check": {k: v for k, v in val_check.metrics.items()},
        }
        # Weights of the best epoch for the logged model.
        from mixvae.model.weights import save_weights
        model = nnx.merge(self.graphdef, params)
        weights_path = self.run_dir / "model" / "weights.msgpack"
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(weights_path, model, tau_counts if cfg.model.use_tau_classifier else None, mask)
        return TrainResult("FAILED" if failure else "FINISHED", failure, self.epoch, self.best_epoch,
                           summary=summary, summary_metrics=metrics, weights_path=weights_path,
                           input_example=np.asarray(sx[:2], F32),
                           stopped_early=stopped_early, stop_message=stop_message)

    def per_component(self, res: SplitResult, mask, y) -> dict:
        k = self.k
        out = {"usage": [], "pi": [], "majority_label": [], "majority_share": [],
               "active": [bool(a) for a in mask]}
        if "responsibilities" not in res.per_image:
            return out
        r = res.per_image["responsibilities"]
        out["usage"] = [float(u) for u in r.mean(0)]
        pi = self.pi(self.best["params"]) if self.best else None
        out["pi"] = [float(p) for p in (pi if pi is not None else np.full(k, 1.0 / k))]
        labeled = y >= 0
        if labeled.any():
            maj, share = mc.majority_labels(r[labeled], y[labeled], self.cfg.model.num_classes)
            out["majority_label"], out["majority_share"] = maj, share
        return out

    def write_diagnostics(self, params, tau_counts, mask, x, y, res: SplitResult, path: Path) -> None:
        """diagnostics/eval.npz from the compiled diagnostics function."""
        m = self.cfg.model
        n = len(x)
        key = self.keys["eval"]
        cap = 10_000
        if n > cap:
            chosen = np.sort(np.asarray(jax.random.choice(jax.random.fold_in(key, 2), n, (cap,), replace=False)))
        else:
            chosen = np.arange(n)
        fixed_idx = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), n))[:8]
        fixed = np.asarray(x[fixed_idx], F32)
        if len(fixed) < 8:
            fixed = np.concatenate([fixed, np.zeros((8 - len(fixed), *fixed.shape[1:]), F32)])
        xs_all = np.asarray(x[chosen], F32)
        outs = []
        for i, start in enumerate(range(0, len(xs_all), self.chunk)):
            xs = xs_all[start:start + self.chunk]
            pad = self.chunk - len(xs)
            if pad:
                xs = np.concatenate([xs, np.zeros((pad, *xs.shape[1:]), F32)])
            outs.append(self.compiled["diagnostics"](params, tau_counts, xs, fixed, mask, np.float32(self.last_temperature),
                                                     np.int32(i), key))
        outs = jax.device_get(outs)
        nsel = len(chosen)
        arrays: dict[str, np.ndarray] = {"index": chosen.astype(np.int64), "labels": y[chosen].astype(np.int64)}
        arrays["z_mean"] = np.concatenate([o["z_mean"] for o in outs])[:nsel]
        arrays["z_mean_selected"] = res.per_image["z_selected"][chosen]
        if "responsibilities" in res.per_image:
            arrays["responsibilities"] = res.per_image["responsibilities"][chosen]
        if "routing_sampled" in outs[0]:
            arrays["routing_sampled"] = np.concatenate([o["routing_sampled"] for o in outs])[:nsel]
        if "kl_per_component" in outs[0]:
            arrays["kl_per_component"] = np.concatenate([o["kl_per_component"] for o in outs])[:nsel]
        first = outs[0]
        arrays["recon_images"] = fixed
        arrays["recon_means"] = np.clip(first["fixed_recon"], 0, 1) if m.reconstruction_loss == "bce" \
            else first["fixed_recon"]
        if "fixed_sigma" in first:
            arrays["recon_sigma"] = first["fixed_sigma"]
        if "fixed_percomp" in first:
            arrays["percomp_images"] = fixed[:6]
            arrays["percomp_means"] = first["fixed_percomp"][:6]
            arrays["percomp_weights"] = first["fixed_weights"][:6]
            arrays["percomp_resp"] = first["fixed_resp"][:6]
            if "fixed_percomp_sigma" in first:
                arrays["percomp_sigma"] = first["fixed_percomp_sigma"][:6]
        if "sigma" in outs[0]:
            sig = np.concatenate([np.asarray(o["sigma"]).reshape(len(o["sigma"]), -1) for o in outs])[:nsel]
            arrays["sigma"] = sig.reshape(-1)[:100_000]
        model = nnx.merge(self.graphdef, params)
        if getattr(model, "embeddings", None) is not None:
            arrays["embeddings"] = np.asarray(model.embeddings[...])
        pi = self.pi(params)
        if pi is not None:
            arrays["pi"] = pi
        arrays["active_mask"] = np.asarray(mask)
        if m.use_tau_classifier:
            counts = np.asarray(tau_counts)
            arrays["tau_counts"] = counts
            arrays["tau"] = counts / counts.sum(1, keepdims=True)
            arrays["tau_free"] = np.asarray(tau_lib.free_channels(counts, m.tau_smoothing_alpha,
                                                                  m.tau_free_count_threshold, mask)).astype(bool)
            arrays["tau_pred"] = res.per_image["tau_pred"][chosen]
            arrays["tau_certainty"] = res.per_image["tau_certainty"][chosen]
            arrays["tau_ood"] = res.per_image["tau_ood"][chosen]
        if "class_pred" in res.per_image:
            arrays["class_pred"] = res.per_image["class_pred"][chosen]
        arrays["recon_error"] = (res.per_image["image"]["loss.recon"][chosen] / m.recon_weight)
        arrays = {k: v for k, v in arrays.items() if v is not None}
        np.savez_compressed(path, **arrays)


def _concat(outs: list, n: int) -> dict:
    """Concatenate per-image leaves of chunk outputs and cut the padding (step terms are kept apart)."""
    def cat(*leaves):
        return np.concatenate([np.asarray(leaf).reshape(np.shape(leaf) or (1,)) for leaf in leaves])[:n]
    per = {k: jax.tree.map(cat, *[o[k] for o in outs]) for k in outs[0] if k != "step"}
    return per


def _finite(v: float):
    return v if math.isfinite(v) else None


def peak_rss_mb() -> float:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover
        import psutil
        return psutil.Process().memory_info().rss / 2**20
