"""The training loop: build the model once, compile once, then epoch after epoch train, validate,
guard against non-finite losses, decide (early stopping, curriculum), log and checkpoint; at the end
restore the best epoch and evaluate it.

Its helpers each own one concern: ``schedule`` (per-epoch factors), ``evaluation`` (split metrics),
``early_stopping``, ``checkpoint``, ``summary`` and ``diagnostics``. The loop knows nothing about
MLflow: it reports through a ``RunWriter`` (``mixvae.tracking.writer``). Host work per epoch is one
``device_get`` of the epoch sums, one of the validation outputs, a few NumPy reductions and one
``writer.log_epoch`` call.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mixvae.config import config_hash, to_yaml
from mixvae.model import MixVAE
from mixvae.model import tau as tau_lib
from mixvae.model.priors import init_pseudo_inputs, training_neighbours, warm_start_clusters
from mixvae.train import checkpoint
from mixvae.train.devices import Placement
from mixvae.train.diagnostics import NUM_FIXED, EvalDiagnostics, record_epoch, save_history
from mixvae.train.early_stopping import BestSnapshot
from mixvae.train.evaluation import SplitEvaluator, mixture_weights, train_metrics
from mixvae.train.schedule import epoch_schedule, example_schedule, temperature
from mixvae.train.step import (STREAM_EVAL, STREAM_INIT, STREAM_SHUFFLE, STREAM_STEPS, Functions, TrainState,
                               make_optimizer)
from mixvae.train.summary import (curriculum_metrics, finite_declared, metrics_status, peak_rss_mb, per_component,
                                  summary_document, versions)

F32 = np.float32


class NonFiniteLoss(RuntimeError):
    """An epoch produced a non-finite loss: the run fails, keeping the best epoch so far."""


class StopRequested(Exception):
    """The epoch hook asked to stop (a sweep's pruner): the run ends like an early stop, with this reason."""


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
    stop_requested: str | None = None       # the epoch hook's reason (a pruned sweep trial)


class BackgroundTrainer:
    """A ``Trainer`` built and compiled on a thread, so that opening the MLflow run (Python and the
    store) overlaps the model's initialisers and the compiler (which release the interpreter)."""

    def __init__(self, loaded, ds, console, t_start: float):
        self.trainer: Trainer | None = None
        self.error: BaseException | None = None

        def work():
            try:
                trainer = Trainer(loaded, ds, None, console, run_dir=None, t_start=t_start)
                trainer.compile()
                self.trainer = trainer
            except BaseException as exc:  # handed to the waiting thread
                self.error = exc
        self.thread = threading.Thread(target=work, name="mixvae-compile", daemon=True)
        self.thread.start()

    def settle(self) -> None:
        """Wait for the thread without its result: the process must not end while XLA compiles on it
        (the runtime aborts a process that exits during a compilation)."""
        self.thread.join()

    def wait(self) -> Trainer:
        """The compiled trainer (Ctrl-C still interrupts the wait); the thread's error is raised here."""
        while self.thread.is_alive():
            self.thread.join(0.1)
        if self.error is not None:
            raise self.error
        return self.trainer


class Trainer:
    """One run's model, compiled functions and state."""

    def __init__(self, loaded, ds, writer, console, *, run_dir: Path | None, t_start: float | None = None):
        """``writer`` and ``run_dir`` may come later (``attach``): the trainer can compile before the run exists."""
        self.loaded, self.cfg, self.ds = loaded, loaded.config, ds
        self.writer, self.console = None, console
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.t_start = t_start or time.perf_counter()
        cfg, t = self.cfg, self.cfg.training
        self.k = cfg.model.num_components
        self.num_labeled = ds.n_labeled
        self.warm_start_note: str | None = None
        self.root = jax.random.PRNGKey(t.seed)
        # The devices: batches split over them, everything else replicated (one device: left as is).
        self.placement = place = Placement.from_config(cfg)
        self.keys = place.replicate({name: jax.random.fold_in(self.root, s) for name, s in
                                     (("init", STREAM_INIT), ("shuffle", STREAM_SHUFFLE), ("steps", STREAM_STEPS),
                                      ("eval", STREAM_EVAL))})
        self.state = place.replicate(self._initial_state())
        self.fns = Functions(cfg, self.graphdef, self.tx, image_shape=ds.image_shape, n_train=ds.n_train,
                             num_labeled=self.num_labeled, shard=place.shard_batch)
        # Device-resident training data, with the guides of every image: its warm-start cluster and its
        # nearest training neighbours (zeros when their term is off).
        self.train_x, self.train_y = place.replicate((jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)))
        self.guides = place.replicate({
            "cluster": jnp.asarray(self._warm_start_clusters() if self.fns.cluster_init
                                   else np.zeros(ds.n_train, np.int32)),
            "neighbours": jnp.asarray(training_neighbours(cfg, ds.train_x) if self.fns.neighbours
                                      else np.zeros((ds.n_train, 1), np.int32))})
        # Evaluation chunk: eval_batch_size images, or the larger split rounded up to a multiple of 8
        # (and of the device count).
        self.chunk = place.eval_chunk(t.eval_batch_size, max(ds.n_val, ds.n_test))
        self.evaluator = SplitEvaluator(cfg, self.graphdef, ds.image_shape, self.chunk, self.keys["eval"])
        self.diagnostics = EvalDiagnostics(cfg, self.graphdef, self.chunk, self.keys["eval"])
        self.host = checkpoint.HostState.from_config(cfg)
        self.best: BestSnapshot | None = None
        self.compiled: dict[str, Any] = {}
        self.compile_time = 0.0
        self.last_temperature = cfg.model.gumbel_temperature
        self.timings: dict[str, float] = {}      # wall seconds: epochs, final_evaluation
        # Called after every epoch with (epoch, that epoch's logged metrics); a returned reason stops the run.
        self.epoch_hook = None
        if writer is not None:
            self.attach(writer, run_dir)

    def attach(self, writer, run_dir: Path) -> None:
        """The run this trainer trains in: its writer and its local directory."""
        self.writer, self.run_dir = writer, Path(run_dir)
        writer.set_tags({"mixvae.devices": str(self.placement.count), "mixvae.processes": str(jax.process_count())})

    def _warm_start_clusters(self) -> np.ndarray:
        """The warm-start cluster of every training image; ``warm_start_note`` says how it was found."""
        method = {"kmeans": "k-means", "tsne": "t-SNE + k-means"}[self.cfg.model.cluster_init]
        started = time.perf_counter()
        clusters = warm_start_clusters(self.cfg, self.ds.train_x)
        self.warm_start_note = (f"{method}, {self.ds.n_train:,} training images into {self.k} clusters "
                                f"({time.perf_counter() - started:.1f} s)")
        return clusters

    def _initial_state(self) -> TrainState:
        """The model (pseudo-inputs from training images for the VampPrior), optimiser and τ counts."""
        m, ds = self.cfg.model, self.ds
        model = MixVAE(self.cfg, ds.image_shape, rngs=nnx.Rngs(params=self.keys["init"]))
        if m.prior_type == "vamp":
            model.set_pseudo_inputs(init_pseudo_inputs(self.cfg, ds.train_x))
        self.graphdef, params = nnx.split(model)
        self.tx = make_optimizer(self.cfg, params)
        tau_counts = (tau_lib.init_counts(self.k, m.num_classes, m.tau_smoothing_alpha) if m.use_tau_classifier
                      else jnp.zeros((1, 1), jnp.float32))
        return TrainState(params=params, opt_state=self.tx.init(params), tau_counts=tau_counts,
                          step=jnp.zeros((), jnp.int32))

    # --- what callers read ---------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return self.host.epoch

    @property
    def curriculum(self):
        return self.host.curriculum

    @property
    def stopper(self):
        return self.host.stopper

    @property
    def history(self) -> dict[str, list]:
        return self.host.history

    @property
    def kick_epochs_total(self) -> int:
        return self.host.kick_epochs_total

    def pi(self, params) -> np.ndarray | None:
        return mixture_weights(self.cfg, self.graphdef, params)

    # --- compilation ----------------------------------------------------------------------------------

    def compile(self) -> float:
        """Ahead-of-time compile the epoch, evaluation and diagnostics functions, once each."""
        t0 = time.perf_counter()
        fns, state, placed = self.fns, self.state, self.placement.jit_options()
        if fns.host_loop:
            zero = jax.eval_shape(fns.zero_sums)
            self.zero_sums = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), zero)
            self.compiled["epoch"] = jax.jit(fns.epoch_step, donate_argnums=(0, 1), **placed).lower(
                state, self.zero_sums, self.train_x, self.train_y, self.guides, example_schedule(self.k),
                np.int32(1), np.int32(0), self.keys["shuffle"], self.keys["steps"]).compile()
        else:
            self.compiled["epoch"] = jax.jit(fns.epoch, donate_argnums=(0,), **placed).lower(
                state, self.train_x, self.train_y, self.guides, example_schedule(self.k), np.int32(1),
                self.keys["shuffle"], self.keys["steps"]).compile()
        x = np.zeros((self.chunk, *self.ds.image_shape), F32)
        y, valid = np.zeros(self.chunk, np.int32), np.zeros(self.chunk, F32)
        mask, temp, chunk_index = np.ones(self.k, F32), np.float32(1.0), np.int32(0)
        self.compiled["eval"] = self.evaluator.compiled = jax.jit(fns.evaluate, **placed).lower(
            state.params, state.tau_counts, x, y, valid, mask, temp, chunk_index, self.keys["eval"]).compile()
        fixed = np.zeros((NUM_FIXED, *self.ds.image_shape), F32)
        self.compiled["diagnostics"] = self.diagnostics.compiled = jax.jit(fns.diagnostics, **placed).lower(
            state.params, state.tau_counts, x, fixed, mask, temp, chunk_index, self.keys["eval"]).compile()
        self.compile_time = time.perf_counter() - t0
        return self.compile_time

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Epochs until max_epochs or early stopping, then the best epoch restored and evaluated."""
        t = self.cfg.training
        started = time.perf_counter()
        reason, stop_message, requested = None, "", None
        try:
            for n in range(self.epoch + 1, t.max_epochs + 1):
                if self._epoch(n, started):
                    stop_message = self.stopper.stop_message(n)
                    break
        except StopRequested as exc:
            requested = stop_message = str(exc)
        except KeyboardInterrupt:
            self.console.end_bar()  # the caller uploads the last checkpoint and ends the run
            return TrainResult("KILLED", f"interrupted at epoch {self.epoch + 1}", self.epoch,
                               self.stopper.best_epoch)
        except NonFiniteLoss as exc:
            reason = str(exc)
        self.console.end_bar()
        stopped_early = bool(stop_message)
        if not stop_message and reason is None:
            stop_message = f"reached max_epochs ({t.max_epochs}); restored epoch {self.stopper.best_epoch}"
        self.timings["epochs"] = time.perf_counter() - started
        t_final = time.perf_counter()
        result = self.finish(reason, stopped_early, stop_message)
        result.stop_requested = requested
        self.timings["final_evaluation"] = time.perf_counter() - t_final
        return result

    def _epoch(self, n: int, started: float) -> bool:
        """Epoch n: train, validate, guard, commit, decide, log and checkpoint. True: stop early now."""
        t_epoch = time.perf_counter()
        plan = self.curriculum.plan(n)
        sched, sched_logged = epoch_schedule(self.cfg, n, plan, self.num_labeled)
        self.last_temperature = temperature(self.cfg, n)
        t_in = time.perf_counter()
        new_state, sums = self.run_epoch(sched, n)
        sums = jax.device_get(sums)  # the one host read of the epoch
        inside = time.perf_counter() - t_in
        train = train_metrics(sums, plan.active_mask)
        val = self.evaluator(new_state.params, new_state.tau_counts, self.ds.val_x, self.ds.val_y,
                             plan.active_mask, self.last_temperature)
        self._check_finite(n, train, val.metrics)
        self._commit(n, new_state, plan, inside)
        events = self._decide(n, plan, train, val.metrics)
        logged = self._epoch_metrics(plan, sched_logged, train, val.metrics, inside)
        record_epoch(self.history, n, self.pi(self.state.params), sums, val, plan.active_mask, self.k)
        epoch_time = time.perf_counter() - t_epoch
        logged["train/training.epoch_time_sec"] = epoch_time
        self._log_and_save(n, logged)
        for e in events:
            self.console.print(self.curriculum.describe(e))
        self._progress(n, started, train, val.metrics, epoch_time)
        if self.epoch_hook is not None and (why := self.epoch_hook(n, logged)):
            raise StopRequested(why)
        return self.stopper.should_stop()

    def run_epoch(self, sched, n: int):
        """Epoch n: one call of the scanned epoch, or one call per step when the host drives it."""
        fn = self.compiled["epoch"]
        if not self.fns.host_loop:
            return fn(self.state, self.train_x, self.train_y, self.guides, sched, np.int32(n),
                      self.keys["shuffle"], self.keys["steps"])
        state, sums = self.state, self.zero_sums
        for i in range(self.fns.steps):  # dispatched asynchronously; nothing is fetched until the end
            state, sums = fn(state, sums, self.train_x, self.train_y, self.guides, sched, np.int32(n),
                             np.int32(i), self.keys["shuffle"], self.keys["steps"])
        return state, sums

    def _check_finite(self, n: int, train: dict, val: dict) -> None:
        """Raise ``NonFiniteLoss`` naming the epoch, its global steps and the first bad terms."""
        bad = {f"train/{k}": v for k, v in train.items() if k.startswith("loss.") and not math.isfinite(v)}
        bad.update({f"val/{k}": v for k, v in val.items() if k.startswith("loss.") and not math.isfinite(v)})
        if bad:
            first = self.host.steps_done
            last = first + self.fns.steps - 1
            what = ", ".join(f"{k.split('/', 1)[1]}={v}" for k, v in list(bad.items())[:4])
            raise NonFiniteLoss(f"non-finite loss at epoch {n} (global steps {first}–{last}): {what}")

    def _commit(self, n: int, new_state: TrainState, plan, inside: float) -> None:
        """The epoch is good: its state becomes the run's."""
        self.state = new_state
        host = self.host
        host.epoch = n
        host.steps_done += self.fns.steps
        host.epoch_time_inside += inside
        if plan.kick:
            host.kick_epochs_total += 1

    def _decide(self, n: int, plan, train: dict, val: dict) -> list[dict]:
        """Curriculum decisions and early stopping after validation; → the curriculum's new events."""
        events = []
        if self.curriculum.enabled:
            where, name = self.cfg.curriculum.unlock.monitor.split("/", 1)
            events = self.curriculum.observe(n, float((train if where == "train" else val).get(name, math.nan)))
        if self.stopper.update(n, self.stopper.value_of(val)):
            self.best = BestSnapshot.take(self.state, plan.active_mask)
            self.save_best()
        if any(e["event"] == "unlock" for e in events):
            self.stopper.restart_patience()
        return events

    def _epoch_metrics(self, plan, sched_logged: dict, train: dict, val: dict, inside: float) -> dict[str, float]:
        logged = {f"train/{k}": v for k, v in train.items()}
        logged.update({f"train/{k}": v for k, v in sched_logged.items()})
        logged["train/training.steps_per_sec"] = self.fns.steps / max(inside, 1e-9)
        if self.curriculum.enabled:
            logged["train/curriculum.k_active"] = float(plan.k_active)
            logged["train/curriculum.unlocked"] = float(plan.unlocked)
            logged["train/curriculum.kick_active"] = float(plan.kick)
        logged.update({f"val/{k}": v for k, v in val.items()})
        return logged

    def _log_and_save(self, n: int, logged: dict[str, float]) -> None:
        """One logging call per epoch, the ``last`` checkpoint, and its upload every checkpoint_every epochs."""
        self.host.metric_history.append(logged)
        self.writer.log_epoch(n, logged)
        self.save_last()
        if n % self.cfg.training.checkpoint_every == 0 and self.cfg.tracking.log_checkpoints:
            self.writer.log_artifacts(self.ckpt_dir / "last", "checkpoints/last")
        self.writer.check()

    def _progress(self, n: int, started: float, train: dict, val: dict, epoch_time: float) -> None:
        t, stopper = self.cfg.training, self.stopper
        suffix = (f"train {train['loss.total']:.2f}  val {val['loss.total']:.2f}  "
                  f"best {stopper.best_value:.2f}@{stopper.best_epoch}")
        if "mixture.K_eff" in val:
            suffix += f"  K_eff {val['mixture.K_eff']:.1f}"
        self.console.bar(n, t.max_epochs, started, "epoch", suffix)
        self.console.epoch_line(
            f"epoch {n}/{t.max_epochs} train/loss.total={train['loss.total']:.4f} "
            f"val/loss.total={val['loss.total']:.4f} monitor={stopper.value_of(val):.4f} "
            f"best={stopper.best_value:.4f}@{stopper.best_epoch} time={epoch_time:.2f}s")

    # --- checkpoints ------------------------------------------------------------------------------------

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @functools.cached_property
    def _config_text(self) -> tuple[str, str]:
        """(config hash, resolved YAML): the config never changes during a run; computed once, not per epoch."""
        return config_hash(self.cfg), to_yaml(self.cfg)

    def _meta(self) -> dict:
        return {"epoch": self.epoch, "step": self.host.steps_done, "config_hash": self._config_text[0],
                "versions": versions()}

    def save_last(self) -> None:
        checkpoint.save_last(self.ckpt_dir / "last", self.state, self.root, self.best, self.host,
                             self._config_text[1], self._meta())

    def save_best(self) -> None:
        checkpoint.save_best(self.ckpt_dir / "best", self.best, self.stopper, self._meta())

    def upload_last(self) -> None:
        if self.cfg.tracking.log_checkpoints and (self.ckpt_dir / "last").exists():
            self.writer.log_artifacts(self.ckpt_dir / "last", "checkpoints/last")

    def restore_last(self, directory: Path) -> None:
        """Resume: everything of the ``last`` checkpoint back into this trainer."""
        state, self.best = checkpoint.load_last(directory, self.state, self.host)
        self.state = self.placement.replicate(state)

    # --- the end of a run ---------------------------------------------------------------------------------

    def finish(self, failure: str | None, stopped_early: bool, stop_message: str) -> TrainResult:
        """Restore the best snapshot, evaluate it, write diagnostics and summary (also after a NaN)."""
        ds, best, stopper = self.ds, self.best, self.stopper
        if best is None:
            return TrainResult("FAILED", failure or "no epoch completed", self.epoch, 0, stop_message=stop_message)
        params = best.params  # host arrays: the compiled functions take them as they are
        tau_counts, mask = jnp.asarray(best.tau_counts), np.asarray(best.active_mask, F32)
        val_check = self.evaluator(params, tau_counts, ds.val_x, ds.val_y, mask, self.last_temperature)
        split = "test" if ds.n_test > 0 else "validation"
        sx, sy = (ds.test_x, ds.test_y) if split == "test" else (ds.val_x, ds.val_y)
        result = (self.evaluator(params, tau_counts, sx, sy, mask, self.last_temperature) if split == "test"
                  else val_check)
        metrics = self._summary_metrics(result.metrics, stopped_early, mask)
        diag_dir = self.run_dir / "diagnostics"
        diag_dir.mkdir(parents=True, exist_ok=True)
        self.diagnostics.write(diag_dir / "eval.npz", params, tau_counts, mask, sx, sy, result, self.last_temperature)
        save_history(diag_dir / "history.npz", self.history)
        summary = summary_document(
            failed=failure is not None, split=split, best_epoch=stopper.best_epoch, metrics=metrics,
            status=metrics_status(self.cfg, self.num_labeled, result.status), result=result,
            components=per_component(self.cfg, result, mask, sy, self.pi(params)), curriculum=self.curriculum,
            ds=ds, warnings=list(self.loaded.warnings) + list(ds.warnings), val_check=val_check.metrics)
        return TrainResult("FAILED" if failure else "FINISHED", failure, self.epoch, stopper.best_epoch,
                           summary=summary, summary_metrics=metrics,
                           weights_path=self._save_weights(params, tau_counts, mask),
                           input_example=np.asarray(sx[:2], F32), stopped_early=stopped_early,
                           stop_message=stop_message)

    def _summary_metrics(self, split_metrics: dict, stopped_early: bool, mask: np.ndarray) -> dict[str, float]:
        host = self.host
        metrics = dict(split_metrics)
        metrics.update({
            "training.best_epoch": float(host.stopper.best_epoch),
            "training.best_monitor_value": float(host.stopper.best_value),
            "training.epochs_completed": float(host.epoch),
            "training.stopped_early": float(stopped_early),
            "training.time_sec": float(time.perf_counter() - self.t_start),
            "training.compile_time_sec": float(self.compile_time),
            "training.steps_per_sec": float(host.steps_done / max(host.epoch_time_inside, 1e-9)),
            "training.peak_rss_mb": float(peak_rss_mb()),
        })
        if host.curriculum.enabled:
            metrics.update(curriculum_metrics(host.curriculum, host.history, mask, host.kick_epochs_total))
        return finite_declared(metrics)

    def _save_weights(self, params, tau_counts, mask) -> Path:
        """Weights of the best epoch, for the logged model."""
        from mixvae.model.weights import save_weights
        path = self.run_dir / "model" / "weights.msgpack"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_weights(path, nnx.merge(self.graphdef, params), tau_counts if self.cfg.model.use_tau_classifier else None,
                     mask)
        return path
