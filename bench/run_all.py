"""Run every speed and memory benchmark, one after the other, and print one table of the results (`make bench`).

    python bench/run_all.py [--quick] [--gpu] [--only NAME ...] [--skip NAME ...] [--out FILE]
    python bench/run_all.py --table FILE.jsonl     re-print the table from saved JSON lines, run nothing

Order: validate_time (validate time), compile_time (compile time), throughput (quick throughput and
the top-M speed-up), quick_e2e (end-to-end time and peak memory), dense (the dense setting beside the
reference implementation), mlflow_overhead (MLflow overhead), compile_count (compile count),
throughput --config mnist_conv (mnist_conv epoch time), throughput --heavy (the conv setting), operators
(the conv decoder's layers in each form, side by side), and with
`--gpu` only gpu_epoch (conv at MNIST size on the GPU).
Each script's JSON lines pass through to stdout (and to `--out` when given); after the last script,
the table (bench/table.py: every measurement, beside the reference figure and the target, met or not)
follows on stdout, after a blank line; the JSON lines in `--out` stay JSON lines only. The exit status
is 1 when any script exited non-zero (a hard limit exceeded, or a failure), else 0.

On a CPU, the mnist_conv measurement runs with `--quick` (a 2 000-image pool; the full MNIST epoch
is extrapolated) and the heavy setting's full-decoding case is measured on one step and extrapolated;
see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

import table  # noqa: E402

# (name, script, extra arguments)
BENCHES = (
    ("validate_time", "validate_time.py", []),
    ("compile_time", "compile_time.py", []),
    ("throughput", "throughput.py", []),
    ("quick_e2e", "quick_e2e.py", []),
    ("dense", "dense.py", []),
    ("mlflow_overhead", "mlflow_overhead.py", []),
    ("compile_count", "compile_count.py", []),
    ("mnist_conv", "throughput.py", ["--config", "mnist_conv"]),
    ("heavy", "throughput.py", ["--heavy"]),
    ("operators", "operators.py", []),
    ("gpu_epoch", "gpu_epoch.py", []),
)
GPU_ONLY = {"gpu_epoch"}


def run_one(name: str, argv: list[str], out, lines: list[dict]) -> int:
    """Run one script; its stdout passes through (and into `out`), its JSON lines are kept."""
    print(f"# run_all: {name}: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=dict(os.environ))
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if out:
            out.write(line)
            out.flush()
        if line.lstrip().startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
    code = proc.wait()
    print(f"# run_all: {name} exited {code} after {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [b[0] for b in BENCHES]
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument("--gpu", action="store_true", help="pass --gpu to every script; also run gpu_epoch")
    parser.add_argument("--only", nargs="*", choices=names, default=None)
    parser.add_argument("--skip", nargs="*", choices=names, default=[])
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    parser.add_argument("--table", type=Path, default=None, metavar="FILE",
                        help="print the table of the JSON lines in FILE and run nothing")
    args = parser.parse_args()
    if args.table is not None:
        print(table.render(table.read_lines(args.table)))
        return

    failed, ran, lines = [], {}, []
    out = args.out.open("a") if args.out else None
    for name, script, extra in BENCHES:
        if (args.only is not None and name not in args.only) or name in args.skip:
            continue
        if name in GPU_ONLY and not args.gpu:
            continue
        argv = [sys.executable, str(common.BENCH / script), *extra]
        if args.quick or (name == "mnist_conv" and not args.gpu):
            argv.append("--quick")
        if args.gpu:
            argv.append("--gpu")
        ran[name] = run_one(name, argv, out, lines)
        if ran[name] != 0:
            failed.append(f"{name} (exit {ran[name]})")
    if out:
        out.close()
    print("\n" + table.render(lines, ran), flush=True)
    if failed:
        print("# run_all: failed: " + ", ".join(failed), file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
