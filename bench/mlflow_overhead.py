"""MLflow overhead during training — epoch-loop wall time with the MLflow writer vs
the in-memory writer, same seed, same epochs.

    python bench/mlflow_overhead.py [--epochs 30] [--repeats 2] [--quick] [--gpu]

`quick.yaml` with patience off trains `--epochs` epochs once with `MemoryWriter` and once with the
MLflow writer (a new sqlite store in a temporary directory), `--repeats` times in alternating order,
after one short unmeasured warm-up run with each writer; the compared figure is the median of
`trainer.timings["epochs"]` (the epoch loop: training, validation, metrics, logging, checkpoints).
Overhead = (MLflow − memory) / memory; target ≤ 5 %, hard limit 10 %. The same ratio of the process's
CPU time over the loop (all threads, the writer's worker included) is reported beside it, without a
target: wall time swings by tens of percent when other work shares a small machine (the header line
gives the load average), CPU time much less.

Also reported: the time the training thread spent inside writer calls (the MLflow writer only
enqueues), and the time the writer's background thread spent in MLflow calls during the loop, each
as a share of the loop's wall time. On a 2-core machine the background thread competes with JAX's
threads for the cores, so its share bounds what it can cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

WRITER_METHODS = ("log_params", "set_tags", "log_epoch", "log_summary", "log_artifact", "log_artifacts",
                  "log_inputs", "check", "flush")


class TimedWriter:
    """Wraps a writer; adds up the wall time the calling thread spends in its methods."""

    def __init__(self, inner):
        self._inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __getattr__(self, name):
        value = getattr(self._inner, name)
        if name not in WRITER_METHODS:
            return value

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        return timed


class BackgroundClock:
    """Adds up the time the MLflow writer's background thread spends in MLflow calls, by wrapping
    `mixvae.tracking.mlflow_writer.MlflowWriter._run` (every submitted call goes through it; epochs
    that share a log_batch go through it together)."""

    def __init__(self):
        from mixvae.tracking.mlflow_writer import MlflowWriter

        self.module = MlflowWriter
        self.original = MlflowWriter._run
        self.seconds = 0.0
        self.lock = threading.Lock()
        self.counting = False

    def __enter__(self):
        original = self.original

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if self.counting:
                    with self.lock:
                        self.seconds += time.perf_counter() - t0
        self.module._run = timed
        return self

    def __exit__(self, *exc):
        self.module._run = self.original


def loop_cpu_clock(trainer) -> dict:
    """Takes the process's CPU time (every thread: JAX's, the training thread, the writer's worker)
    from now until the epoch loop ends (when `trainer.finish` is called); → {"loop": seconds} then."""
    cpu = {"start": time.process_time()}
    finish = trainer.finish

    def timed_finish(*args, **kwargs):
        cpu["loop"] = time.process_time() - cpu["start"]
        return finish(*args, **kwargs)
    trainer.finish = timed_finish
    return cpu


def one_run(kind: str, epochs: int, tmp: Path, index: int, overrides: tuple[str, ...] = ()) -> dict:
    from mixvae.config import load_config
    from mixvae.tracking.writer import MemoryWriter

    loaded = load_config("quick", [f"training.max_epochs={epochs}", "training.patience=null", *overrides])
    run_dir = tmp / f"{kind}-{index}"
    clock = None
    if kind == "mlflow":
        from mixvae.tracking.mlflow_run import open_run

        clock = BackgroundClock().__enter__()
        inner = open_run(uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment_name="bench",
                         run_name=f"bench-{index}")
    else:
        inner = MemoryWriter(artifact_root=run_dir / "memory-artifacts")
    writer = TimedWriter(inner)
    try:
        trainer = common.make_trainer(loaded, run_dir, writer=writer)
        trainer.compile()
        if clock is not None:
            inner.flush()            # start the clock with an empty queue
            clock.counting = True
        writer.seconds = 0.0
        cpu = loop_cpu_clock(trainer)
        result = trainer.run()
        if clock is not None:
            clock.counting = False
        assert result.status == "FINISHED", result.reason
        out = {"epochs_s": trainer.timings["epochs"], "cpu_s": cpu["loop"], "writer_s": writer.seconds,
               "background_s": clock.seconds if clock else 0.0}
        if kind == "mlflow":
            t0 = time.perf_counter()
            inner.set_status("FINISHED")
            out["drain_s"] = time.perf_counter() - t0
        return out
    finally:
        if kind == "mlflow":
            inner.close()
            clock.__exit__(None, None, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both writers' runs (repeatable)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per writer (median compared)")
    parser.add_argument("--quick", action="store_true", help="one run per writer")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()
    common.header("mlflow_overhead")
    results = common.Results("mlflow_overhead")
    repeats = 1 if args.quick else max(1, args.repeats)

    runs: dict[str, list[dict]] = {"memory": [], "mlflow": []}
    with common.fresh_dir() as tmp:
        # Warm-up (not counted): first-use costs of the process (lazy imports, the new store).
        for kind in ("memory", "mlflow"):
            one_run(kind, 3, tmp, -1, tuple(args.set))
        for i in range(repeats):
            order = ("memory", "mlflow") if i % 2 == 0 else ("mlflow", "memory")
            for kind in order:
                runs[kind].append(one_run(kind, args.epochs, tmp, i, tuple(args.set)))

    config = (f"quick ({args.epochs} epochs, patience off, seed 0; median of {repeats} run(s) per writer)"
              + "".join(f"; {item}" for item in args.set))
    memory = statistics.median(r["epochs_s"] for r in runs["memory"])
    mlflow = statistics.median(r["epochs_s"] for r in runs["mlflow"])
    listing = "; ".join(f"{k}: " + ", ".join(f"{r['epochs_s']:.2f}" for r in v) for k, v in runs.items())
    results.emit(config, "epoch_loop_memory_writer", memory, "s", note=listing)
    results.emit(config, "epoch_loop_mlflow_writer", mlflow, "s")
    results.emit(config, "mlflow_overhead", 100.0 * (mlflow - memory) / memory, "%", "<= 5", "<= 10")
    cpu_memory = statistics.median(r["cpu_s"] for r in runs["memory"])
    cpu_mlflow = statistics.median(r["cpu_s"] for r in runs["mlflow"])
    results.emit(config, "mlflow_cpu_overhead", 100.0 * (cpu_mlflow - cpu_memory) / cpu_memory, "%",
                 note=f"process CPU time of the epoch loop, all threads: memory {cpu_memory:.2f} s, "
                      f"MLflow {cpu_mlflow:.2f} s (steadier than wall time when other work shares the machine)")
    mf = runs["mlflow"]
    results.emit(config, "mlflow_writer_calls_share", 100.0 * statistics.median(
        r["writer_s"] / r["epochs_s"] for r in mf), "%",
        note="training-thread time inside MlflowWriter methods (enqueue only) / epoch-loop wall time")
    results.emit(config, "mlflow_background_share", 100.0 * statistics.median(
        r["background_s"] / r["epochs_s"] for r in mf), "%",
        note="background-thread time in MLflow calls during the loop / epoch-loop wall time")
    results.emit(config, "mlflow_drain_at_end", statistics.median(r["drain_s"] for r in mf), "s",
                 note="set_status(FINISHED) after the loop: waits for the queue, ends the run")
    results.finish()


if __name__ == "__main__":
    main()
