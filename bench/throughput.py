"""Training throughput after compilation: quick steps/s, top-M speed-up, mnist_conv and heavy epochs.

    python bench/throughput.py                     quick throughput and the top-M speed-up
    python bench/throughput.py --config mnist_conv mnist_conv steps/s and epoch time
    python bench/throughput.py --heavy             the heavy 28×28 setting, full and top-2 decoding
    options: --epochs N, --quick (fewer epochs / a smaller pool), --gpu (JAX's default backend)

- quick throughput: `quick.yaml` for 30 epochs (patience off), `training.steps_per_sec` of the run
  (train steps / time inside the compiled epoch function). Target ≥ 150 steps/s, hard limit ≥ 100.
- top-M speed-up: `mnist_conv.yaml`'s model (K = 10, conv encoder/decoder [16, 32, 64]) on the 28×28
  canvas data (bench/make_canvas_npz.py), batch 64, a 600-image pool (300 with --quick), one epoch each
  of `top_m_gating: 2` and `0`; the ratio of steps/s. Target ≥ 3×, hard limit ≥ 2×.
- mnist_conv epoch time: `mnist_conv.yaml` as shipped. Real MNIST files are used when $MIXVAE_DATA_DIR
  or the cache holds them; otherwise an MNIST-sized IDX directory (60 000 + 10 000 canvas digits with
  shifted copies) stands in. Reported only (no limit). `--quick` caps the pool at 2 000 images (1 000
  test images) and extrapolates the training part of the full epoch from the measured steps/s.
- heavy: 28×28 canvas digits, 1 293 training images (val/test fractions 0.14), conv encoder/decoder
  `[32, 64, 128]`, mixture, decentralized, K = 20, D = 2, CIN with E = 32, straight-through Gumbel
  routing, heteroscedastic MSE with one σ per image (as the reference), batch 128: all 20 components
  decoded first (in `--decode-chunks` rematerialised chunks, default 40; one real epoch, or
  `--full-steps N` steps extrapolated to the epoch), then `top_m_gating: 2` for one real epoch, each
  after compilation. Targets: ≤ 96 s/epoch (full), ≤ 9.6 s/epoch (top-2), peak
  RSS ≤ 1.5 GB; the reference implementation's figures (289 s/epoch, 4.1 GB, bench/table.py) go into the
  lines' `reference`. No hard limits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

import table  # noqa: E402

HEAVY_MODEL = {
    "prior_type": "mixture", "num_components": 20, "latent_dim": 2, "latent_layout": "decentralized",
    "encoder_type": "conv", "decoder_type": "conv", "conv_channels": [32, 64, 128],
    "decoder_conditioning": "cin", "component_embedding_dim": 32,
    "use_gumbel_softmax": True, "use_straight_through_gumbel": True,
    "reconstruction_loss": "mse", "use_heteroscedastic_decoder": True, "sigma_granularity": "image",
}
# All 20 decoded: the 2 560 decodes of a step in 40 rematerialised chunks of 64 (training.decode_chunks).
HEAVY_DECODE_CHUNKS = 40
# 1 797 canvas digits: test round(0.14·1797) = 252, val 252, train 1 293.
HEAVY_DATA_FRACTIONS = {"val_fraction": 0.14, "test_fraction": 0.14}
HEAVY_BATCH, HEAVY_STEPS, HEAVY_VAL = 128, 1293 // 128, 252


def train_for(loaded, run_dir: Path) -> dict:
    """Compile, train `training.max_epochs` epochs with the in-memory writer; the timings."""
    trainer = common.make_trainer(loaded, run_dir)
    compile_s = trainer.compile()
    result = trainer.run()
    if result.status != "FINISHED":
        raise RuntimeError(f"training ended {result.status}: {result.reason}")
    m = result.summary_metrics
    epochs = max(result.epochs_completed, 1)
    cost = trainer.compiled["epoch"].cost_analysis()  # a dict, or a list of one dict in older JAX
    cost = (cost[0] if isinstance(cost, list) and cost else cost) or {}
    return {
        # XLA's own count for the compiled epoch function (a scanned epoch counts its step body once)
        "xla_flops": cost.get("flops"), "xla_bytes": cost.get("bytes accessed"),
        "compile_s": compile_s,
        "steps_per_sec": m["training.steps_per_sec"],
        "epoch_s": trainer.timings["epochs"] / epochs,          # train + validation + bookkeeping
        "train_epoch_s": trainer.fns.steps / m["training.steps_per_sec"],  # inside the epoch function
        "final_evaluation_s": trainer.timings["final_evaluation"],
        "steps_per_epoch": trainer.fns.steps,
        "host_loop": trainer.fns.host_loop,
        "epochs": result.epochs_completed,
        "n_train": trainer.ds.n_train,
        "n_val": trainer.ds.n_val,
        "peak_rss_mb": common.peak_rss_mb(),
    }


def load(name_or_path: str, overrides: list[str], raw: dict | None = None):
    from mixvae.config import load_config

    loaded = load_config(name_or_path, overrides, raw=raw)
    return loaded


# ---- quick throughput ------------------------------------------------------------------------------


def bench_quick_throughput(results: common.Results, tmp: Path, epochs: int) -> None:
    loaded = load("quick", [f"training.max_epochs={epochs}", "training.patience=null"])
    r = train_for(loaded, tmp / "quick")
    config = f"quick ({epochs} epochs, {r['steps_per_epoch']} steps/epoch, patience off)"
    results.emit(config, "training.steps_per_sec", r["steps_per_sec"], "steps/s", ">= 150", ">= 100")
    results.emit(config, "epoch_time", r["epoch_s"], "s/epoch",
                 note="wall time per epoch: train steps, validation, logging, checkpoint")


# ---- top-M speed-up --------------------------------------------------------------------------------


TOP_M_BATCH = 64


def bench_top_m_speedup(results: common.Results, tmp: Path, epochs: int, quick: bool) -> None:
    # Batch 64 and a 600-image pool (480 training images, 7 steps per epoch): decoding all ten
    # components through the conv decoder is slow on a 2-core CPU (see docs/performance.md).
    npz = common.canvas_npz(tmp)
    pool = 300 if quick else 600
    rates = {}
    for m in (2, 0):
        loaded = load("mnist_conv", ["data.dataset=npz", f"data.path={npz}", f"data.num_samples={pool}",
                                     f"model.top_m_gating={m}", f"training.batch_size={TOP_M_BATCH}",
                                     f"training.max_epochs={epochs}", "training.patience=null"])
        r = train_for(loaded, tmp / f"top{m}")
        rates[m] = r["steps_per_sec"]
        what = "all 10 decoded" if m == 0 else "top-2"
        config = (f"mnist_conv model on canvas npz (pool {pool}, train {r['n_train']}), top_m_gating {m} "
                  f"({what}), batch {TOP_M_BATCH}, {r['epochs']} epoch(s) × {r['steps_per_epoch']} steps")
        results.emit(config, "training.steps_per_sec", r["steps_per_sec"], "steps/s")
        results.emit(config, "compile_time", r["compile_s"], "s")
        results.emit(config, "peak_rss", r["peak_rss_mb"], "MiB",
                     note="peak of the benchmark process so far (ru_maxrss)")
    results.emit("mnist_conv model on canvas npz, K = 10: top_m_gating 2 vs 0", "steps_per_sec_ratio",
                 rates[2] / rates[0], "x", ">= 3", ">= 2")


# ---- mnist_conv epoch time -------------------------------------------------------------------------


MNIST_TRAIN, MNIST_TEST = 60_000, 10_000


def mnist_sized_idx(directory: Path, n_test: int = MNIST_TEST) -> Path:
    """60 000 training and `n_test` test images in the MNIST IDX layout, from the canvas digits
    (shifted copies of scikit-learn's 1 797)."""
    import numpy as np

    fx = common.fixtures()
    total = MNIST_TRAIN + n_test
    images, labels = fx.digits_canvas("upscale", copies=-(-total // 1797), seed=0)
    order = np.random.default_rng(0).permutation(len(images))[:total]
    x, y = images[order], labels[order].astype("uint8")
    directory.mkdir(parents=True, exist_ok=True)
    parts = (x[:MNIST_TRAIN], y[:MNIST_TRAIN], x[MNIST_TRAIN:], y[MNIST_TRAIN:])
    for name, array in zip(fx.IDX_NAMES, parts):
        fx.write_idx(directory / name, array)
    return directory


def bench_mnist_conv(results: common.Results, tmp: Path, epochs: int, quick: bool) -> None:
    from validate_time import has_mnist_files, mnist_dirs

    overrides = [f"training.max_epochs={epochs}", "training.patience=null"]
    real = next((d for d in mnist_dirs() if has_mnist_files(d)), None)
    if real is not None:
        source = f"MNIST files in {real}"
        overrides.append(f"data.path={real}")
    else:
        n_test = 1_000 if quick else MNIST_TEST
        source = f"MNIST-sized generated IDX (60 000 + {n_test} canvas digits)"
        overrides.append(f"data.path={mnist_sized_idx(tmp / 'mnist-sized', n_test)}")
    if quick:
        overrides.append("data.num_samples=2000")
        source += ", pool capped at 2 000"
    loaded = load("mnist_conv", overrides)
    r = train_for(loaded, tmp / "mnist_conv")
    config = (f"mnist_conv ({source}; train {r['n_train']}, {r['steps_per_epoch']} steps/epoch, "
              f"{r['epochs']} epoch(s))")
    results.emit(config, "training.steps_per_sec", r["steps_per_sec"], "steps/s", "reported")
    results.emit(config, "epoch_time", r["epoch_s"], "s/epoch", "reported",
                 note="wall time per epoch of this split size: train steps, validation, logging")
    if quick:
        batch = loaded.config.training.batch_size
        full_steps = (MNIST_TRAIN - round(0.1 * MNIST_TRAIN)) // batch
        results.emit(config, "train_epoch_time_estimated", full_steps / r["steps_per_sec"], "s/epoch",
                     "reported", note=f"{full_steps} steps of the full 54 000-image epoch ÷ measured steps/s "
                                      "(validation not included)")
    results.emit(config, "compile_time", r["compile_s"], "s", "reported")
    results.emit(config, "final_evaluation", r["final_evaluation_s"], "s", "reported",
                 note="best-epoch evaluation of the val and test splits, diagnostics")
    results.emit(config, "peak_rss", r["peak_rss_mb"], "MiB", "reported")


# ---- heavy -----------------------------------------------------------------------------------------


def heavy_raw(npz: Path, m: int, epochs: int, num_samples: int | None = None, chunks: int = 1) -> dict:
    data = {"dataset": "npz", "path": str(npz), **HEAVY_DATA_FRACTIONS}
    if num_samples is not None:
        data["num_samples"] = num_samples
    return {"experiment": {"name": f"heavy-top{m}"}, "data": data,
            "model": {**HEAVY_MODEL, "top_m_gating": m},
            "training": {"batch_size": HEAVY_BATCH, "max_epochs": epochs, "patience": None,
                         "decode_chunks": chunks}}


def pool_for_steps(steps: int) -> int:
    """The smallest pool whose training split (val/test fractions 0.14 each) holds `steps` batches."""
    n = steps * HEAVY_BATCH
    while n - 2 * round(0.14 * n) < steps * HEAVY_BATCH:
        n += 1
    return n


def bench_heavy(results: common.Results, tmp: Path, epochs: int, which: list[int], full_steps: int,
                chunks: int = HEAVY_DECODE_CHUNKS) -> None:
    """Full decoding (m = 0, in `chunks` rematerialised chunks) is measured on `full_steps` training
    steps and extrapolated to the 1 293-image epoch, or on real epochs when full_steps is 0; top-M
    runs real epochs. Run full decoding first: the process's peak RSS is its peak."""
    npz = common.canvas_npz(tmp)
    for m in which:
        sampled = m == 0 and full_steps > 0
        pool = pool_for_steps(full_steps) if sampled else None
        raw = heavy_raw(npz, m, 1 if sampled else epochs, pool, chunks if m == 0 else 1)
        r = train_for(load(f"heavy-top{m}", [], raw=raw), tmp / f"heavy-top{m}")
        what = "all 20 decoded" + (f", decode_chunks {chunks}" if chunks > 1 else "") if m == 0 else f"top-{m}"
        target = "<= 96" if m == 0 else "<= 9.6"
        epoch_ref = table.reference("conv, all 20 decoded: time per epoch" if m == 0 else "conv, top-2: time per epoch")
        rss_ref = table.reference("conv, all 20 decoded: peak RSS") if m == 0 else None
        base = ("heavy: 28×28 canvas, conv [32, 64, 128], K = 20, D = 2, CIN E = 32, straight-through "
                f"Gumbel, heteroscedastic mse, batch {HEAVY_BATCH}, {what}")
        if sampled:
            step_s = 1.0 / r["steps_per_sec"]
            val_per_image = max(r["epoch_s"] - r["train_epoch_s"], 0.0) / r["n_val"]
            estimate = HEAVY_STEPS * step_s + HEAVY_VAL * val_per_image
            config = (f"{base}; {r['steps_per_epoch']} measured step(s) on a {pool}-image pool "
                      f"(train {r['n_train']}, val {r['n_val']})")
            results.emit(config, "epoch_time_estimated", estimate, "s/epoch", target, reference=epoch_ref,
                         note=f"extrapolated to the 1 293-image epoch: {HEAVY_STEPS} × {step_s:.1f} s/step "
                              f"+ {HEAVY_VAL} × {val_per_image:.3f} s per validation image")
            results.emit(config, "step_time", step_s, "s/step")
        else:
            if r["n_train"] != 1293:
                raise RuntimeError(f"the heavy setting needs 1 293 training images, got {r['n_train']}")
            config = f"{base}; train 1293 (val 252), {r['epochs']} epoch(s)"
            results.emit(config, "epoch_time", r["epoch_s"], "s/epoch", target, reference=epoch_ref,
                         note=f"{r['steps_per_epoch']} steps + validation of {r['n_val']} images")
            results.emit(config, "train_epoch_time", r["train_epoch_s"], "s/epoch",
                         note="time inside the compiled epoch function only")
            results.emit(config, "training.steps_per_sec", r["steps_per_sec"], "steps/s")
        results.emit(config, "compile_time", r["compile_s"], "s")
        results.emit(config, "peak_rss", r["peak_rss_mb"], "MiB", "<= 1536", reference=rss_ref,
                     note="peak of the benchmark process so far (ru_maxrss)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("quick", "mnist_conv"), default=None,
                        help="mnist_conv: its epoch time only; quick or nothing: quick throughput and the "
                             "top-M speed-up")
    parser.add_argument("--heavy", action="store_true", help="the heavy 28×28 setting only")
    parser.add_argument("--top-m", type=int, nargs="*", default=[0, 2],
                        help="heavy: which top_m_gating values to run (0 = all decoded)")
    parser.add_argument("--decode-chunks", type=int, default=HEAVY_DECODE_CHUNKS,
                        help="heavy, all components decoded: training.decode_chunks (1 = all at once)")
    parser.add_argument("--full-steps", type=int, default=0,
                        help="heavy, all components decoded: measure this many steps and extrapolate to "
                             "the epoch (0 = train a real 1 293-image epoch; very slow on a CPU)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per measurement")
    parser.add_argument("--quick", action="store_true", help="fewer epochs, smaller pools")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()

    common.header("throughput")
    results = common.Results("throughput")
    with common.fresh_dir() as tmp:
        if args.heavy:
            bench_heavy(results, tmp, args.epochs or 1, args.top_m, args.full_steps, args.decode_chunks)
        elif args.config == "mnist_conv":
            bench_mnist_conv(results, tmp, args.epochs or (1 if args.quick else 2), args.quick)
        else:
            bench_quick_throughput(results, tmp, args.epochs or (10 if args.quick else 30))
            bench_top_m_speedup(results, tmp, args.epochs or 1, args.quick)
    results.finish()


if __name__ == "__main__":
    main()
