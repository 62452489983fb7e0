"""Compile time of the epoch, evaluation and diagnostics functions for quick.yaml.

    python bench/compile_time.py [--repeats 1] [--config quick] [--gpu]

`Trainer.compile()` lowers and compiles the three functions ahead of time; its wall time is what a
run logs as `training.compile_time_sec`. The line reports the first compilation in this process (what
a `mixvae train` run pays); `--repeats N` compiles N − 1 more fresh trainers and lists them in the
note. Target ≤ 10 s, hard limit 20 s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="quick")
    parser.add_argument("--repeats", type=int, default=1, help="fresh trainers to compile (first reported)")
    parser.add_argument("--quick", action="store_true", help="one compilation (the default)")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()
    common.header("compile_time")
    results = common.Results("compile_time")

    from mixvae.config import load_config

    repeats = 1 if args.quick else max(1, args.repeats)
    seconds = []
    with common.fresh_dir() as tmp:
        for i in range(repeats):
            trainer = common.make_trainer(load_config(args.config), tmp / f"run-{i}")
            seconds.append(trainer.compile())
            del trainer
    note = "first compilation in the process"
    if repeats > 1:
        note += "; all: " + ", ".join(f"{s:.2f}" for s in seconds)
    results.emit(args.config, "training.compile_time_sec", seconds[0], "s", "<= 10", "<= 20", note=note)
    results.finish()


if __name__ == "__main__":
    main()
