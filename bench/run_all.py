"""Run every speed and memory benchmark, one after the other (`make bench`).

    python bench/run_all.py [--quick] [--gpu] [--only NAME ...] [--skip NAME ...] [--out FILE]

Order: validate_time (validate time), compile_time (compile time), throughput (quick throughput and
the top-M speed-up), quick_e2e (end-to-end time and peak memory), mlflow_overhead (MLflow overhead),
compile_count (compile count), throughput --config mnist_conv (mnist_conv epoch time),
throughput --heavy (the heavy setting).
Each script's JSON lines pass through to stdout (and to `--out` when given); the exit status is 1
when any script exited non-zero (a hard limit exceeded, or a failure), else 0.

On a CPU, the mnist_conv measurement runs with `--quick` (a 2 000-image pool; the full MNIST epoch
is extrapolated) and the heavy setting's full-decoding case is measured on one step and extrapolated;
see bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

# (name, script, extra arguments)
BENCHES = (
    ("validate_time", "validate_time.py", []),
    ("compile_time", "compile_time.py", []),
    ("throughput", "throughput.py", []),
    ("quick_e2e", "quick_e2e.py", []),
    ("mlflow_overhead", "mlflow_overhead.py", []),
    ("compile_count", "compile_count.py", []),
    ("mnist_conv", "throughput.py", ["--config", "mnist_conv"]),
    ("heavy", "throughput.py", ["--heavy"]),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [b[0] for b in BENCHES]
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--gpu", action="store_true", help="pass --gpu to every script")
    parser.add_argument("--only", nargs="*", choices=names, default=None)
    parser.add_argument("--skip", nargs="*", choices=names, default=[])
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    args = parser.parse_args()

    failed = []
    out = args.out.open("a") if args.out else None
    for name, script, extra in BENCHES:
        if (args.only is not None and name not in args.only) or name in args.skip:
            continue
        argv = [sys.executable, str(common.BENCH / script), *extra]
        if args.quick or (name == "mnist_conv" and not args.gpu):
            argv.append("--quick")
        if args.gpu:
            argv.append("--gpu")
        print(f"# run_all: {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if out:
                out.write(line)
                out.flush()
        code = proc.wait()
        print(f"# run_all: {name} exited {code} after {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
        if code != 0:
            failed.append(f"{name} (exit {code})")
    if out:
        out.close()
    if failed:
        print("# run_all: failed: " + ", ".join(failed), file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
