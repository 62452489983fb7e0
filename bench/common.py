"""Shared helpers of the benchmark scripts: the JSON result lines, the machine, fresh directories.

Every script prints one JSON line per measurement on stdout —
`{"bench", "config", "metric", "value", "unit", "target", "limit", "reference", "machine"}` — and
exits 1 when a hard limit was exceeded. `target` and `limit` are written as a comparison and a number
("<= 3", ">= 100", "== 1"), or null where there is none; `reference` is the reference
implementation's figure for the same measurement in the same unit (bench/table.py holds them), or
null; a measurement that could not be taken has value null and a `note` saying why.

Import this module before jax or mixvae: `select_platform()` must run first, because JAX reads
`JAX_PLATFORMS` once, at its first use.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CONFIGS = ROOT / "configs"
SHIPPED_CONFIGS = ("quick", "default", "decentralized", "tau_semisupervised", "curriculum", "vamp",
                   "geometric", "mnist_conv")

# ---- platform ------------------------------------------------------------------------------------


def select_platform(argv: list[str] | None = None) -> str:
    """CPU unless `--gpu` is on the command line or JAX_PLATFORMS is already set; returns the choice.

    With `--gpu` JAX picks its default backend (a GPU when one is there)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--gpu" in argv:
        return os.environ.get("JAX_PLATFORMS", "")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return os.environ["JAX_PLATFORMS"]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_description() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def machine() -> str:
    """What the measurement runs on: the CPU model and core count, or the GPU's name.

    With JAX_PLATFORMS=cpu this does not import jax (scripts that only time subprocesses)."""
    if os.environ.get("JAX_PLATFORMS") == "cpu":
        return f"CPU: {cpu_description()}"
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"CPU: {cpu_description()}"
    return f"GPU: {device.device_kind} (host {cpu_description()})"


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
        return f"{one:.2f} {five:.2f} {fifteen:.2f}"
    except OSError:  # pragma: no cover
        return "unknown"


# ---- results -------------------------------------------------------------------------------------


def passes(value: float, bound: str) -> bool:
    op, number = bound.split()
    number = float(number)
    return {"<=": value <= number, ">=": value >= number, "==": value == number}[op]


class Results:
    """Prints the JSON lines of one script and remembers whether a hard limit was exceeded."""

    def __init__(self, bench: str, machine_name: str | None = None):
        self.bench = bench
        self.machine = machine_name
        self.exceeded: list[str] = []
        self.lines: list[dict] = []

    def emit(self, config: str, metric: str, value: float | int | None, unit: str,
             target: str | None = None, limit: str | None = None, note: str | None = None,
             reference: float | None = None) -> dict:
        if self.machine is None:
            self.machine = machine()
        line = {"bench": self.bench, "config": config, "metric": metric,
                "value": None if value is None else round(float(value), 4) if isinstance(value, float) else value,
                "unit": unit, "target": target, "limit": limit, "reference": reference, "machine": self.machine}
        if note:
            line["note"] = note
        self.lines.append(line)
        print(json.dumps(line, ensure_ascii=False), flush=True)
        if limit is not None and value is not None and not passes(float(value), limit):
            self.exceeded.append(f"{config} {metric} = {value} {unit} (limit {limit})")
        return line

    def finish(self) -> None:
        """Exit 1 when a hard limit was exceeded (the reasons go to stderr), else 0."""
        for what in self.exceeded:
            print(f"hard limit exceeded: {what}", file=sys.stderr)
        sys.exit(1 if self.exceeded else 0)


def header(bench: str) -> None:
    """One line on stderr: what runs, when, and how loaded the machine is."""
    now = datetime.datetime.now().isoformat(timespec="seconds")
    print(f"# {bench} · {now} · JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', '')!s} · "
          f"load average {load_average()}", file=sys.stderr, flush=True)


# ---- places --------------------------------------------------------------------------------------


WORKDIR_VAR = "MIXVAE_WORKDIR"  # mixvae's working directory: checkpoints, reports, the default store


@contextlib.contextmanager
def fresh_dir(prefix: str = "mixvae-bench-", chdir: bool = True) -> Iterator[Path]:
    """A new empty temporary directory, made the current directory and mixvae's working directory
    (MIXVAE_WORKDIR) while the block runs (so a local MLflow store, reports and checkpoints land
    there), removed afterwards."""
    old, old_workdir = Path.cwd(), os.environ.get(WORKDIR_VAR)
    with tempfile.TemporaryDirectory(prefix=prefix) as name:
        path = Path(name)
        if chdir:
            os.chdir(path)
            os.environ[WORKDIR_VAR] = str(path)
        try:
            yield path
        finally:
            if chdir:
                os.chdir(old)
                if old_workdir is None:
                    os.environ.pop(WORKDIR_VAR, None)
                else:
                    os.environ[WORKDIR_VAR] = old_workdir


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (subprocesses started in it inherit them)."""
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def child_env(directory: Path) -> dict[str, str]:
    """Environment of a `mixvae` subprocess: this one's, with `directory` as mixvae's working
    directory, a new local sqlite store in it, and the repository importable even when mixvae is not
    installed."""
    env = dict(os.environ)
    env[WORKDIR_VAR] = str(directory)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{directory / 'mlflow.db'}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def canvas_npz(directory: Path, copies: int = 1, mode: str = "upscale") -> Path:
    """The 28×28 benchmark data (scikit-learn's digits on a canvas, upscaled or pasted in the centre),
    written by bench/make_canvas_npz.py into `directory`."""
    out = Path(directory) / f"canvas-{mode}-{copies}.npz"
    subprocess.run([sys.executable, str(BENCH / "make_canvas_npz.py"), "--out", str(out),
                    "--copies", str(copies), "--mode", mode], check=True, stdout=subprocess.DEVNULL)
    return out


def fixtures():
    """tests/fixtures.py (the one definition of the generated data files), loaded by path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mixvae_test_fixtures", ROOT / "tests" / "fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def children_peak_rss_mb() -> float:
    """Largest peak resident memory of any waited-for child process so far, in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


# ---- a `mixvae train` process --------------------------------------------------------------------


_TABLE_ROW = re.compile(r"^\s*(?P<name>\S.*?)\s{2,}(?P<seconds>-?\d+(?:\.\d+)?)(?:\s+-?\d+\s*%)?\s*$")


def parse_phases(stderr: str) -> dict[str, float]:
    """Seconds per phase from the stderr of `mixvae -v train`: the `phases {json}` line (or a
    `phases name=seconds …` line), or else the phase table (a header line `phase  seconds …`, then
    one `name  seconds  share` line per phase; a table's descriptive names are mapped back to the
    phase keys where mixvae.console knows them; its `the rest` and `total` lines are not phases).
    {} when neither is there."""
    lines = stderr.splitlines()
    for line in lines:
        text = line.strip()
        if not text.startswith("phases") or re.match(r"^phases?\s{2,}seconds\b", text):
            continue
        rest = text[len("phases"):].lstrip(" :")
        if rest.startswith("{"):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                return {k: float(v) for k, v in json.loads(rest).items()}
        pairs = re.findall(r"([A-Za-z_][\w.+-]*)\s*[=:]\s*(-?\d+(?:\.\d+)?)", rest)
        if pairs:  # `phases data=0.1 compile=2.3 …`
            return {k: float(v) for k, v in pairs}
    try:
        from mixvae.console import PHASE_NAMES
        keys = {description: key for key, description in PHASE_NAMES.items()}
    except Exception:  # pragma: no cover - the table's names are kept as they are
        keys = {}
    phases: dict[str, float] = {}
    inside = False
    for line in lines:
        if re.match(r"^phases?\s{2,}seconds\b", line.strip()):
            inside, phases = True, {}
            continue
        if not inside:
            continue
        match = _TABLE_ROW.match(line)
        if match is None:
            break
        name = match["name"].strip()
        if not name.startswith(("the rest", "total")):
            phases[keys.get(name, name)] = float(match["seconds"])
    return phases


def parse_stdout(stdout: str) -> dict[str, str]:
    """The `key=value` lines a mixvae command prints on stdout."""
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def run_metric(db: Path, run_id: str, key: str) -> float | None:
    """A summary metric of a run, straight from the sqlite store (no mlflow import needed)."""
    import sqlite3

    try:
        with sqlite3.connect(db) as con:
            row = con.execute("SELECT value FROM latest_metrics WHERE run_uuid = ? AND key = ?",
                              (run_id, key)).fetchone()
        return None if row is None else float(row[0])
    except sqlite3.Error:
        return None


RUN_METRICS = ("training.peak_rss_mb", "training.steps_per_sec", "training.epochs_completed")


def train_process(config: str | Path, overrides: list[str], directory: Path) -> dict:
    """`python -m mixvae -v train -c CONFIG --set …` in `directory` (its working directory, a new
    sqlite store there), timed from process start to exit. → {"wall", "code", "tail" (the last lines
    of stderr), "phases", "stdout" (its key=value lines), "metrics" (RUN_METRICS of the run, None
    where absent), "child_rss" (peak RSS of the largest child so far, MiB)}."""
    import time

    argv = [sys.executable, "-m", "mixvae", "-v", "train", "-c", str(config)]
    for item in overrides:
        argv += ["--set", item]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=directory, env=child_env(directory), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = parse_stdout(proc.stdout)
    run_id = out.get("run_id", "")
    return {"wall": wall, "code": proc.returncode, "tail": proc.stderr.strip().splitlines()[-5:],
            "phases": parse_phases(proc.stderr), "stdout": out, "child_rss": children_peak_rss_mb(),
            "metrics": {key: run_metric(directory / "mlflow.db", run_id, key) for key in RUN_METRICS}}


def emit_train_process(results: Results, config: str, run: dict, wall_target: str | None,
                       wall_limit: str | None, rss_target: str | None = None, rss_limit: str | None = None,
                       wall_reference: float | None = None) -> bool:
    """The JSON lines of one `train_process`: wall time, every phase and what no phase covers, the
    run's steps/s, epochs and peak RSS, the child's ru_maxrss. False (one line with value null, and a
    hard-limit failure) when the process failed."""
    if run["code"] != 0:
        results.emit(config, "e2e_wall_time", None, "s", wall_target, wall_limit, reference=wall_reference,
                     note=f"mixvae train exited {run['code']}: " + " | ".join(run["tail"]))
        results.exceeded.append(f"mixvae train exited {run['code']}")
        return False
    wall, phases, metrics = run["wall"], run["phases"], run["metrics"]
    results.emit(config, "e2e_wall_time", wall, "s", wall_target, wall_limit, reference=wall_reference,
                 note="process start to exit, fresh directory, new sqlite store")
    for name, seconds in phases.items():
        results.emit(config, f"phase.{name}", seconds, "s")
    results.emit(config, "phase.rest", wall - sum(phases.values()) if phases else None, "s",
                 note="wall − Σ phases: what no phase covers (params, tags, closing the run)" if phases
                 else "no phases line on stderr")
    if metrics["training.steps_per_sec"] is not None:
        results.emit(config, "training.steps_per_sec", metrics["training.steps_per_sec"], "steps/s")
    if metrics["training.epochs_completed"] is not None:
        results.emit(config, "training.epochs_completed", int(metrics["training.epochs_completed"]), "epochs")
    if metrics["training.peak_rss_mb"] is not None:
        results.emit(config, "training.peak_rss_mb", metrics["training.peak_rss_mb"], "MiB", rss_target, rss_limit,
                     note="summary metric of the run (peak at the end of training)")
    results.emit(config, "process_peak_rss", run["child_rss"], "MiB", rss_target, rss_limit,
                 note="ru_maxrss of the whole child process, model logging and report included")
    return True

def make_trainer(loaded, run_dir: Path, writer=None):
    """A `Trainer` on the config's data with a quiet console (in-memory writer by default)."""
    from mixvae.console import Console
    from mixvae.data import load_dataset
    from mixvae.tracking.writer import MemoryWriter
    from mixvae.train.loop import Trainer

    ds = load_dataset(loaded.config)
    writer = writer if writer is not None else MemoryWriter(artifact_root=Path(run_dir) / "memory-artifacts")
    return Trainer(loaded, ds, writer, Console(quiet=True), run_dir=Path(run_dir))


# ---- markdown ------------------------------------------------------------------------------------


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def mean_std(values: list[float], digits: int) -> str:
    """`mean ± sample std` with `digits` decimals; one value alone; "–" for none."""
    import statistics

    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def replace_section(path: Path, title: str, body: str, intro: str = "") -> None:
    """Put `## title` followed by `body` into the markdown file `path`: the section of that title (its
    heading up to the next `## ` heading outside a code fence) is replaced in place, a new one is
    appended; text above the first `## ` heading and every other section stay as they are. A missing
    file starts with `intro`."""
    text = path.read_text(encoding="utf-8") if path.exists() else (intro.strip() + "\n" if intro else "")
    chunks: list[list[str]] = [[]]  # chunks[0]: the text above the first `## ` heading
    fenced = False
    for line in text.splitlines():
        fenced ^= line.lstrip().startswith("```")
        if line.startswith("## ") and not fenced:
            chunks.append([])
        chunks[-1].append(line)
    new = [f"## {title}", "", *body.strip("\n").splitlines()]
    titles = [c[0][3:].strip() for c in chunks[1:]]
    if title in titles:
        chunks[titles.index(title) + 1] = new + [""]
    else:
        if chunks[-1] and chunks[-1][-1].strip():
            chunks[-1].append("")
        chunks.append(new + [""])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(line for c in chunks for line in c).rstrip("\n") + "\n", encoding="utf-8")
