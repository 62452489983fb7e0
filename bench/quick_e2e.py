"""End-to-end time and peak memory: `mixvae train --config configs/quick.yaml` from process start to exit.

    python bench/quick_e2e.py [--config configs/quick.yaml] [--gpu]

Runs `python -m mixvae -v train -c <config>` in a fresh temporary directory with a new local sqlite
store, and times the process from start to exit (report and model logging included). The `phases`
line that `-v` prints on stderr gives data, store, compile, epochs, final evaluation, model and report;
`imports+rest` is the wall time left over (interpreter start, imports, config, params/tags, closing
the run). Peak resident memory is `training.peak_rss_mb` of the run (read from the sqlite store) and
the child's ru_maxrss.

End-to-end wall time: target ≤ 60 s, hard limit 90 s. Peak RSS: target ≤ 1.5 GB, hard limit 2.5 GB.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.select_platform()

PHASES = ("data", "store", "compile", "epochs", "final_evaluation", "model", "report")


def parse_phases(stderr: str) -> dict[str, float]:
    for line in stderr.splitlines():
        if line.startswith("phases "):
            return {k: float(v) for k, v in json.loads(line[len("phases "):]).items()}
    return {}


def parse_stdout(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def run_metric(db: Path, run_id: str, key: str) -> float | None:
    """A summary metric of the run, straight from the sqlite store (no mlflow import needed)."""
    try:
        with sqlite3.connect(db) as con:
            row = con.execute("SELECT value FROM latest_metrics WHERE run_uuid = ? AND key = ?",
                              (run_id, key)).fetchone()
        return None if row is None else float(row[0])
    except sqlite3.Error:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(common.CONFIGS / "quick.yaml"))
    parser.add_argument("--quick", action="store_true", help="no effect: one run is the measurement")
    parser.add_argument("--gpu", action="store_true", help="let JAX use its default backend")
    args = parser.parse_args()
    common.header("quick_e2e")
    results = common.Results("quick_e2e")
    config = Path(args.config).stem

    with common.fresh_dir() as tmp:
        env = common.child_env(tmp)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mixvae", "-v", "train", "-c", args.config],
                              cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        child_rss = common.children_peak_rss_mb()
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-5:]
            results.emit(config, "e2e_wall_time", None, "s", "<= 60", "<= 90",
                         note=f"mixvae train exited {proc.returncode}: " + " | ".join(tail))
            results.exceeded.append(f"mixvae train exited {proc.returncode}")
            results.finish()
        out = parse_stdout(proc.stdout)
        phases = parse_phases(proc.stderr)
        rss_metric = run_metric(tmp / "mlflow.db", out.get("run_id", ""), "training.peak_rss_mb")
        steps = run_metric(tmp / "mlflow.db", out.get("run_id", ""), "training.steps_per_sec")
        epochs = run_metric(tmp / "mlflow.db", out.get("run_id", ""), "training.epochs_completed")

    results.emit(config, "e2e_wall_time", wall, "s", "<= 60", "<= 90",
                 note="process start to exit, fresh directory, new sqlite store")
    for name in PHASES:
        results.emit(config, f"phase.{name}", phases.get(name), "s")
    results.emit(config, "phase.imports+rest", wall - sum(phases.values()), "s",
                 note="wall − Σ phases: interpreter start, imports, config, params/tags, closing the run")
    if steps is not None:
        results.emit(config, "training.steps_per_sec", steps, "steps/s")
    if epochs is not None:
        results.emit(config, "training.epochs_completed", int(epochs), "epochs")
    if rss_metric is not None:
        results.emit(config, "training.peak_rss_mb", rss_metric, "MiB", "<= 1536", "<= 2560",
                     note="summary metric of the run (peak at the end of training)")
    results.emit(config, "process_peak_rss", child_rss, "MiB", "<= 1536", "<= 2560",
                 note="ru_maxrss of the whole child process, model logging and report included")
    results.finish()


if __name__ == "__main__":
    main()
