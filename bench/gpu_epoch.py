"""Epoch time of the conv setting at MNIST size, K = 20, every component decoded and top-2: the GPU row of
docs/performance.md.

    python bench/gpu_epoch.py [--gpu] [--epochs 2 | --quick] [--batch 128 256] [--top-m 0 2]
                               [--decode-chunks 1 20] [--transposed-conv subpixel native]
                               [--decode-dtype float32 bfloat16] [--pool N]

Data: an MNIST-sized IDX directory of generated canvas digits (60 000 training + 10 000 test images; 54 000
train after the 10 % validation split), or real MNIST files when $MIXVAE_DATA_DIR or the cache holds them.
Model: the heavy setting's (conv encoder/decoder [32, 64, 128], decentralized, K = 20, D = 2, CIN E = 32,
straight-through Gumbel, heteroscedastic MSE) with one σ per image, as the reference implementation has.
Each setting is compiled, then trained `--epochs` epochs with the in-memory writer; the epoch time is the
wall time of the epoch loop ÷ epochs (train steps, validation of 6 000 images, bookkeeping). Targets (GPU):
≤ 2.5 s per epoch with every component decoded, ≤ 1 s with top-2. `--pool` caps the images for a CPU try.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

from throughput import HEAVY_MODEL, load, mnist_sized_idx, train_for  # noqa: E402

TARGETS = {0: "<= 2.5", 2: "<= 1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per setting (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 epoch per setting")
    parser.add_argument("--batch", type=int, nargs="+", default=[128])
    parser.add_argument("--top-m", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--decode-chunks", type=int, nargs="+", default=[1],
                        help="training.decode_chunks for the all-decoded setting (rematerialised chunks)")
    parser.add_argument("--transposed-conv", nargs="+", default=["subpixel"], choices=("subpixel", "native"),
                        help="the decoder's transposed-convolution form (networks.TRANSPOSED_CONV_FORM)")
    parser.add_argument("--decode-dtype", nargs="+", default=["float32"], choices=("float32", "bfloat16"),
                        help="training.decode_dtype: the decoder's arithmetic and activations")
    parser.add_argument("--pool", type=int, default=None, help="cap the images (a CPU try)")
    args = parser.parse_args()
    args.epochs = args.epochs or (1 if args.quick else 2)
    common.header("gpu_epoch")
    results = common.Results("gpu_epoch")
    with common.fresh_dir() as tmp:
        from validate_time import has_mnist_files, mnist_dirs
        real = next((d for d in mnist_dirs() if has_mnist_files(d)), None)
        path = real or mnist_sized_idx(tmp / "mnist-sized")
        source = f"MNIST files in {real}" if real else "MNIST-sized generated IDX (60 000 + 10 000 canvas digits)"
        from mixvae.model import networks
        settings = [(m, c, f, d) for m in args.top_m for c in (args.decode_chunks if m == 0 else [1])
                    for f in args.transposed_conv for d in args.decode_dtype]
        for batch in args.batch:
            for m, chunks, form, dtype in settings:
                networks.TRANSPOSED_CONV_FORM = form
                model = {**HEAVY_MODEL, "top_m_gating": m, "sigma_granularity": "image"}
                data = {"dataset": "mnist", "path": str(path)}
                if args.pool:
                    data["num_samples"] = args.pool
                raw = {"experiment": {"name": f"gpu-top{m}"}, "data": data, "model": model,
                       "training": {"batch_size": batch, "max_epochs": args.epochs, "patience": None,
                                    "decode_chunks": chunks, "decode_dtype": dtype}}
                name = f"top{m}-b{batch}-c{chunks}-{form}-{dtype}"
                r = train_for(load(f"gpu-{name}", [], raw=raw), tmp / name)
                what = "all 20 decoded" + (f", decode_chunks {chunks}" if chunks > 1 else "") if m == 0 else f"top-{m}"
                if dtype != "float32":
                    what += f", decoder in {dtype}"
                if form != "subpixel":
                    what += f", {form} transposed convolution"
                precision = os.environ.get("JAX_DEFAULT_MATMUL_PRECISION")
                if precision:
                    what += f", matmul precision {precision}"
                config = (f"conv [32, 64, 128], K = 20, {what}, σ per image, batch {batch}; {source}; "
                          f"train {r['n_train']}, val {r['n_val']}, {r['epochs']} epoch(s)")
                results.emit(config, "epoch_time", r["epoch_s"], "s/epoch", TARGETS.get(m, "reported"),
                             note=f"{r['steps_per_epoch']} steps + validation of {r['n_val']} images")
                results.emit(config, "train_epoch_time", r["train_epoch_s"], "s/epoch",
                             note="inside the compiled epoch function only")
                results.emit(config, "training.steps_per_sec", r["steps_per_sec"], "steps/s")
                results.emit(config, "compile_time", r["compile_s"], "s")
                for key in ("xla_flops", "xla_bytes"):
                    results.emit(config, key, r[key], "per step", note="XLA's cost analysis of the compiled epoch")
    results.finish()


if __name__ == "__main__":
    main()
