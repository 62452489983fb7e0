"""Data-parallel throughput: steps/s of one config on one device and on every local device.

    python bench/data_parallel.py --gpu                        quick.yaml on 1 GPU and on all GPUs
    python bench/data_parallel.py --gpu --config mnist_conv    mnist_conv (MNIST files, else generated IDX)
    python bench/data_parallel.py --gpu --batch 256 --epochs 5
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python bench/data_parallel.py --quick   (CPU check)

For each device count (1, then `jax.local_device_count()` when that is more; `--devices 1 2 4` picks
others) the config is trained with `training.devices` set to it: `Trainer.compile()`, then
`Trainer.run()` with the in-memory writer, patience off. Reported per count: `training.steps_per_sec`
(train steps ÷ time inside the compiled epoch function), images/s (steps/s × batch), the wall time per
epoch (with validation and bookkeeping) and the compile time; then the speed-up of the largest count
over one device. The batch is the config's unless `--batch` sets it: it must divide by every count.
No targets and no limits: the numbers are reported (docs/performance.md).

On the CPU the forced host devices share the same cores, so the speed-up there says nothing about
GPUs; the CPU run only checks that the script and the sharded path work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()


def measure(name: str, overrides: list[str], devices: int, run_dir: Path) -> dict:
    """bench/throughput.py's measurement of one config, with `training.devices` set to ``devices``."""
    from throughput import load, train_for

    loaded = load(name, overrides + [f"training.devices={devices}"])
    return {**train_for(loaded, run_dir), "batch": loaded.config.training.batch_size}


def data_overrides(config: str, tmp: Path, quick: bool) -> tuple[list[str], str]:
    """mnist_conv: its MNIST files, else the MNIST-sized generated IDX directory of bench/throughput.py."""
    if config != "mnist_conv":
        return [], config
    from throughput import mnist_sized_idx
    from validate_time import has_mnist_files, mnist_dirs

    real = next((d for d in mnist_dirs() if has_mnist_files(d)), None)
    if real is not None:
        return [f"data.path={real}"], f"mnist_conv (MNIST files in {real})"
    overrides = [f"data.path={mnist_sized_idx(tmp / 'mnist-sized', 1_000 if quick else 10_000)}"]
    if quick:
        overrides.append("data.num_samples=2000")
    return overrides, "mnist_conv (MNIST-sized generated IDX" + (", pool 2 000)" if quick else ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quick", help="preset or config file (default quick)")
    parser.add_argument("--devices", type=int, nargs="*", default=None,
                        help="device counts to measure (default: 1 and every local device)")
    parser.add_argument("--batch", type=int, default=None, help="training.batch_size for every count")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per measurement (default 10, --quick 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="fewer epochs, a smaller mnist_conv pool")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()

    import jax

    local = jax.local_device_count()
    counts = args.devices or sorted({1, local})
    common.header("data_parallel")
    results = common.Results("data_parallel")
    epochs = args.epochs or (2 if args.quick else 10)
    rates: dict[int, float] = {}
    with common.fresh_dir() as tmp:
        overrides, what = data_overrides(args.config, tmp, args.quick)
        overrides += [f"training.max_epochs={epochs}", "training.patience=null", *args.overrides]
        if args.batch:
            overrides.append(f"training.batch_size={args.batch}")
        for n in counts:
            print(f"# {what}: training.devices={n} ({local} local)", file=sys.stderr, flush=True)
            r = measure(args.config, overrides, n, tmp / f"devices-{n}")
            rates[n] = r["steps_per_sec"]
            config = (f"{what}, training.devices {n} of {local}, batch {r['batch']} "
                      f"({r['batch'] // n} per device), train {r['n_train']}, {r['steps_per_epoch']} steps/epoch, "
                      f"{r['epochs']} epochs{', host-driven epoch' if r['host_loop'] else ''}")
            results.emit(config, "training.steps_per_sec", r["steps_per_sec"], "steps/s")
            results.emit(config, "images_per_sec", r["steps_per_sec"] * r["batch"], "images/s")
            results.emit(config, "epoch_time", r["epoch_s"], "s/epoch",
                         note="wall time per epoch: train steps, validation, logging, checkpoint")
            results.emit(config, "compile_time", r["compile_s"], "s")
    if len(rates) > 1:
        low, top = min(rates), max(rates)
        results.emit(f"{what}: training.devices {top} vs {low}", "steps_per_sec_ratio", rates[top] / rates[low], "x")
    results.finish()


if __name__ == "__main__":
    main()
