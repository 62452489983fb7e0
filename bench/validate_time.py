"""Validate time: `mixvae validate` on each shipped config, wall time including interpreter start.

    python bench/validate_time.py [--repeats 3] [--quick] [--gpu]

Each config is validated `--repeats` times as a fresh subprocess; the line reports the median
(target ≤ 3 s, hard limit 5 s). `mnist_conv` needs MNIST files: when $MIXVAE_DATA_DIR (or the default
cache) does not hold them, a small generated IDX directory (tests/fixtures.py) stands in through
`--set data.path=…`, and the line's config says so. A validation that fails is reported with value
null and its exit status, and counts as exceeding the limit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

TARGET, LIMIT = "<= 3", "<= 5"
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")


def mixvae_command() -> list[str]:
    """The installed console script when there is one (what a user runs), else `python -m mixvae`."""
    script = Path(sys.executable).parent / "mixvae"
    return [str(script)] if script.exists() else [sys.executable, "-m", "mixvae"]


def has_mnist_files(directory: Path) -> bool:
    if (directory / "mnist.npz").is_file():
        return True
    return all((directory / n).is_file() or (directory / f"{n}.gz").is_file() for n in MNIST_NAMES)


def mnist_dirs() -> list[Path]:
    base = os.environ.get("MIXVAE_DATA_DIR")
    roots = [Path(base)] if base else [Path.home() / ".cache" / "mixvae"]
    return [d for root in roots for d in (root / "mnist", root)]


def time_validate(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(mixvae_command() + ["validate", *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    return time.perf_counter() - t0, proc.returncode, (proc.stdout + proc.stderr).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="validations per config (median reported)")
    parser.add_argument("--quick", action="store_true", help="one validation per config")
    parser.add_argument("--configs", nargs="*", default=list(common.SHIPPED_CONFIGS))
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()
    repeats = 1 if args.quick else max(1, args.repeats)
    common.header("validate_time")
    results = common.Results("validate_time")

    with common.fresh_dir() as tmp:
        env = common.child_env(tmp)
        for name in args.configs:
            extra: list[str] = []
            label = name
            if name == "mnist_conv" and not any(has_mnist_files(d) for d in mnist_dirs()):
                idx = common.fixtures().write_idx_dir(tmp / "mnist-fixture", n_train=300, n_test=60)
                extra = ["--set", f"data.path={idx}"]
                label = "mnist_conv (generated 300+60-image IDX fixture via data.path)"
            path = common.CONFIGS / f"{name}.yaml"
            times, failure = [], None
            for _ in range(repeats):
                seconds, code, output = time_validate([str(path), *extra], env, tmp)
                if code != 0:
                    failure = f"mixvae validate exited {code}: {output.splitlines()[-1] if output else ''}"
                    break
                times.append(seconds)
            if failure:
                results.emit(label, "validate_wall_time", None, "s", TARGET, LIMIT, note=failure)
                results.exceeded.append(f"{label}: {failure}")
                continue
            results.emit(label, "validate_wall_time", statistics.median(times), "s", TARGET, LIMIT,
                         note=f"median of {len(times)}: " + ", ".join(f"{t:.2f}" for t in times))
    results.finish()


if __name__ == "__main__":
    main()
