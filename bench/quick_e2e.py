"""End-to-end time and peak memory: `mixvae train --config configs/quick.yaml` from process start to exit.

    python bench/quick_e2e.py [--config configs/quick.yaml] [--gpu]

Runs `python -m mixvae -v train -c <config>` in a fresh temporary directory with a new local sqlite
store, and times the process from start to exit (report and model logging included). The phases
that `-v` prints on stderr (start-up, data, build, store, compile, epochs, final evaluation, model,
report; bench/common.py's `parse_phases`) are reported one line each; `phase.rest` is the wall time no
phase covers (params/tags, closing the run). Peak resident memory is `training.peak_rss_mb` of the
run (read from the sqlite store) and the child's ru_maxrss.

End-to-end wall time: target ≤ 60 s, hard limit 90 s. Peak RSS: target ≤ 1.5 GB, hard limit 2.5 GB.
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
    parser.add_argument("--config", default=str(common.CONFIGS / "quick.yaml"))
    parser.add_argument("--quick", action="store_true", help="no effect: one run is the measurement")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()
    common.header("quick_e2e")
    results = common.Results("quick_e2e")
    with common.fresh_dir() as tmp:
        with common.environment(MIXVAE_COMPILATION_CACHE=str(tmp / "jax-cache")):  # empty: a first run
            run = common.train_process(args.config, [], tmp)
    common.emit_train_process(results, Path(args.config).stem, run, "<= 60", "<= 90", "<= 1536", "<= 2560")
    results.finish()


if __name__ == "__main__":
    main()
