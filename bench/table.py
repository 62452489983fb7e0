"""The one table `make bench` ends with: every measurement beside the reference figure and the target.

The named rows come first, in the order of `ROWS`: the comparison with the reference implementation
(its figures, measured on a 2-core CPU of the kind the numbers in docs/performance.md come from, are
fixed numbers here: they cannot be re-measured from this repository), then the rows every run of
`make bench` has had. A named row that no JSON line matched shows "not run". Every other JSON line
follows as a row of its own (phases, compile times, steps/s of the sub-settings …), so nothing a
script measured is left out.

Columns: measurement, ours (value and unit), reference, target, met ("met", "not met", "–" where the
target is only "reported" or none, "failed" where the script could not take the measurement).

    python bench/run_all.py --table results.jsonl     re-print the table from saved JSON lines
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    """A named row: which JSON lines it shows, and what it is compared with."""

    name: str
    script: str                      # run_all.py's name of the script that measures it
    bench: str                       # the JSON line's "bench"
    metrics: tuple[str, ...]         # its "metric", any of these
    config: tuple[str, ...] = ()     # substrings its "config" contains, all of them
    unit: str = ""
    target: str | None = None        # as the script writes it (shown while the row is not run)
    reference: float | None = None   # the reference implementation's figure, in `unit`
    gpu: bool = False                # measured only with --gpu

    def matches(self, line: dict) -> bool:
        return (line.get("bench") == self.bench and line.get("metric") in self.metrics
                and all(part in str(line.get("config", "")) for part in self.config))


IMAGE_SIGMA, PIXEL_SIGMA = "σ per image", "σ per pixel"
HEAVY, ALL_DECODED, TOP2 = "heavy:", "all 20 decoded", "top-2"
CONV_EPOCH = ("epoch_time_estimated", "epoch_time")

ROWS: tuple[Row, ...] = (
    # The comparison with the reference implementation (2-core CPU; 4.1 GB = 4 198 MiB).
    Row("dense: time per training step, σ per image", "dense", "dense", ("step_time",), (IMAGE_SIGMA,),
        "ms/step", "reported", 32.0),
    Row("dense: time per epoch", "dense", "dense", ("epoch_time",), (IMAGE_SIGMA,), "s/epoch", "<= 0.26", 0.71),
    Row("dense: 20 epochs end to end, report and model included", "dense", "dense", ("e2e_wall_time",),
        (IMAGE_SIGMA, "warm compilation cache, new store"), "s", "<= 20", 48.7),
    Row("dense: the same, first run of the config (empty compilation cache)", "dense", "dense",
        ("e2e_wall_time",), (IMAGE_SIGMA, "empty compilation cache"), "s", "<= 20", 48.7),
    Row("dense: the same, a later run in the same directory (the store exists)", "dense", "dense",
        ("e2e_wall_time",), (IMAGE_SIGMA, "existing store"), "s", "<= 20", 48.7),
    Row("dense, σ per pixel: time per training step", "dense", "dense", ("step_time",), (PIXEL_SIGMA,),
        "ms/step", "<= 45"),
    Row("dense: the same, with the interpreter's finalisation (the ending before the quick exit)", "dense",
        "dense", ("e2e_wall_time",), (IMAGE_SIGMA, "interpreter's finalisation"), "s", "reported", 48.7),
    Row("conv, all 20 decoded: time per epoch", "heavy", "throughput", CONV_EPOCH, (HEAVY, ALL_DECODED),
        "s/epoch", "<= 96", 289.0),
    Row("conv, all 20 decoded: peak RSS", "heavy", "throughput", ("peak_rss",), (HEAVY, ALL_DECODED),
        "MiB", "<= 1536", 4198.0),
    Row("conv, top-2: time per epoch", "heavy", "throughput", CONV_EPOCH, (HEAVY, TOP2), "s/epoch", "<= 9.6",
        289.0),
    Row("quick.yaml: MLflow writer overhead", "mlflow_overhead", "mlflow_overhead", ("mlflow_overhead",),
        (), "%", "<= 5"),
    Row("GPU, conv MNIST size K = 20, all decoded: time per epoch", "gpu_epoch", "gpu_epoch", ("epoch_time",),
        (ALL_DECODED,), "s/epoch", "<= 2.5", gpu=True),
    Row("GPU, conv MNIST size K = 20, top-2: time per epoch", "gpu_epoch", "gpu_epoch", ("epoch_time",),
        (TOP2,), "s/epoch", "<= 1", gpu=True),
    # The rows every `make bench` has.
    Row("validate time", "validate_time", "validate_time", ("validate_wall_time",), (), "s", "<= 3"),
    Row("compile time, quick.yaml", "compile_time", "compile_time", ("training.compile_time_sec",), (),
        "s", "<= 10"),
    Row("quick throughput", "throughput", "throughput", ("training.steps_per_sec",), ("quick (",),
        "steps/s", ">= 150"),
    Row("top-M speed-up, K = 10 (top-2 ÷ all decoded)", "throughput", "throughput", ("steps_per_sec_ratio",),
        (), "x", ">= 3"),
    Row("quick.yaml end to end", "quick_e2e", "quick_e2e", ("e2e_wall_time",), (), "s", "<= 60"),
    Row("quick.yaml end to end: peak RSS of the process", "quick_e2e", "quick_e2e", ("process_peak_rss",), (),
        "MiB", "<= 1536"),
    Row("compile count", "compile_count", "compile_count",
        ("compilations.epoch", "compilations.evaluate", "compilations.diagnostics"), (), "count", "== 1"),
    Row("mnist_conv: time per epoch", "mnist_conv", "throughput", ("epoch_time",), ("mnist_conv (",),
        "s/epoch", "reported"),
    Row("mnist_conv: full training epoch, estimated", "mnist_conv", "throughput",
        ("train_epoch_time_estimated",), ("mnist_conv (",), "s/epoch", "reported"),
)


def reference(name: str) -> float | None:
    """The reference figure of the named row (scripts put it into their JSON lines)."""
    for row in ROWS:
        if row.name == name:
            return row.reference
    raise KeyError(f"no row named {name!r} in bench/table.py")


# ---- formatting ------------------------------------------------------------------------------------


def number(value) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return str(int(value))
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def with_unit(value, unit: str) -> str:
    return "–" if value is None else f"{number(value)} {unit}".strip()


def shown_target(target: str | None, unit: str) -> str:
    if not target:
        return "–"
    parts = target.split()
    if len(parts) == 2 and parts[0] in ("<=", ">=", "=="):
        sign = {"<=": "≤", ">=": "≥", "==": "="}[parts[0]]
        return f"{sign} {parts[1]} {unit}".strip()
    return target


def met(value, target: str | None) -> str:
    if value is None:
        return "failed"
    parts = (target or "").split()
    if len(parts) != 2 or parts[0] not in ("<=", ">=", "=="):
        return "–"
    bound = float(parts[1])
    ok = {"<=": value <= bound, ">=": value >= bound, "==": value == bound}[parts[0]]
    return "met" if ok else "not met"


def tokens(config: str) -> list[str]:
    """A config label's parts: split at commas, semicolons and parentheses."""
    return [t for t in re.split(r"\s*[;,()]\s*", config) if t]


def distinguish(configs: list[str]) -> list[str]:
    """For each config label, its first part that the other (different) labels lack; "" when all
    labels are the same."""
    distinct = list(dict.fromkeys(configs))
    if len(distinct) < 2:
        return [""] * len(configs)
    parts = {c: set(tokens(c)) for c in distinct}
    label = {}
    for c in distinct:
        others = [parts[o] for o in distinct if o != c]
        label[c] = (next((t for t in tokens(c) if all(t not in o for o in others)), None)
                    or next((t for t in tokens(c) if any(t not in o for o in others)), c))
    return [label[c] for c in configs]


def config_parts(configs: list[str]) -> list[str]:
    """Short names for the config labels of one bench: the first part where those differ, then what
    tells apart the labels that share it (the first part alone when all labels are the same)."""
    firsts = [(tokens(c) or [""])[0] for c in configs]
    if len(set(configs)) < 2:
        return firsts
    names = []
    for c, first in zip(configs, firsts):
        group = [o for o, f in zip(configs, firsts) if f == first]
        inner = distinguish(group)[group.index(c)]
        names.append(" · ".join(p for p in (first if len(set(firsts)) > 1 else "", inner) if p))
    return names


def clip(text: str, width: int = 72) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


# ---- the table -------------------------------------------------------------------------------------


def labelled(name: str, lines: list[dict]) -> list[str]:
    """Row names for the lines one name covers: the name, plus what tells the lines apart."""
    configs = distinguish([str(line.get("config", "")) for line in lines])
    metrics = [str(line.get("metric")) for line in lines]
    several_metrics = len(set(metrics)) > 1
    return [clip(" · ".join(p for p in (name, c, m if several_metrics else "") if p))
            for c, m in zip(configs, metrics)]


def result_row(name: str, line: dict, unit: str, target: str | None, ref: float | None) -> list[str]:
    unit = line.get("unit") or unit
    target = line.get("target", target)
    ref = line["reference"] if line.get("reference") is not None else ref
    value = line.get("value")
    return [name, with_unit(value, unit) if value is not None else "failed",
            with_unit(ref, unit), shown_target(target, unit), met(value, target)]


def table_rows(lines: list[dict], ran: dict[str, int] | None = None) -> list[list[str]]:
    """The rows: named rows (each matched line, or "not run"), then every line no named row took,
    named by its bench, what tells its config apart from the bench's other configs, and its metric.
    `ran`: run_all's script names → exit status, for the scripts this call ran (None: unknown)."""
    used: set[int] = set()
    rows: list[list[str]] = []
    for row in ROWS:
        found = [i for i, line in enumerate(lines) if i not in used and row.matches(line)]
        used.update(found)
        if not found:
            why = "not run"
            if ran is not None and row.script in ran:
                why = f"no result (exit {ran[row.script]})"
            elif row.gpu:
                why = "not run (--gpu)"
            rows.append([row.name, why, with_unit(row.reference, row.unit), shown_target(row.target, row.unit),
                         why.split(" (")[0]])
            continue
        names = labelled(row.name, [lines[i] for i in found])
        rows += [result_row(n, lines[i], row.unit, row.target, row.reference) for n, i in zip(names, found)]
    rest = [i for i in range(len(lines)) if i not in used]
    by_bench: dict[str, list[int]] = {}
    for i in rest:
        by_bench.setdefault(str(lines[i].get("bench")), []).append(i)
    named = {}
    for bench, members in by_bench.items():
        configs = [str(lines[j].get("config", "")) for j in members]
        for j, part in zip(members, config_parts(configs)):
            named[j] = clip(" · ".join(p for p in (bench, part, str(lines[j].get("metric"))) if p))
    rows += [result_row(named[i], lines[i], "", None, None) for i in rest]
    return rows


HEADERS = ["measurement", "ours", "reference", "target", "met"]


def render(lines: list[dict], ran: dict[str, int] | None = None) -> str:
    """The table, markdown with aligned columns, and the machine(s) the lines came from."""
    rows = table_rows(lines, ran)
    widths = [max(len(r[c]) for r in [HEADERS, *rows]) for c in range(len(HEADERS))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(cells, widths)) + " |"
    out = [fmt(HEADERS), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, rows)]
    machines = list(dict.fromkeys(str(line["machine"]) for line in lines if line.get("machine")))
    if machines:
        out.append("machine: " + "; ".join(machines))
    return "\n".join(out)


def read_lines(path: Path) -> list[dict]:
    """The JSON result lines of a file; other lines (progress, a printed table) are skipped."""
    lines = []
    for text in Path(path).read_text(encoding="utf-8").splitlines():
        if text.lstrip().startswith("{"):
            with contextlib.suppress(ValueError):
                line = json.loads(text)
                if isinstance(line, dict) and "bench" in line and "metric" in line:
                    lines.append(line)
    return lines
