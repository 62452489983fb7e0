"""COMPARE.md (and COMPARE.html, compare_figures/) for two or more runs.

Five parts: the runs, the config keys that differ, the metrics with direction-aware deltas to a
baseline (▲ better, ▼ worse), seed groups (runs sharing `mixvae.config_hash_noseed`) with a per-seed
table of the headline keys and mean ± sample std, and overlaid validation curves.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mixvae.config import flatten_dict

from .document import Document, Image, Paragraph, Section, Table
from .formatting import GENERATED_PREFIX, acc_method_of, clip, direction_of, fmt, ordered_metric_keys

BETTER, WORSE = "▲", "▼"
FIGURES_DIR = "compare_figures"
# (file, history key, drawn even when no run has it)
CURVES = (
    ("val_loss_total.png", "val/loss.total", True),
    ("val_loss_recon.png", "val/loss.recon", True),
    ("val_mixture_K_eff.png", "val/mixture.K_eff", False),
    ("val_clustering_acc.png", "val/clustering.acc", False),
    ("val_tau_accuracy.png", "val/tau.accuracy", False),
)
# columns of the per-seed table of a seed group (each only when a member logged it)
SEED_TABLE_KEYS = ("clustering.acc", "clustering.nmi", "mixture.K_eff", "latent.active_units", "loss.recon",
                   "tau.accuracy")


def default_compare_dir(run_ids) -> str:
    """`reports/compare-<8 hex>`: SHA-256 of the sorted distinct run ids joined by commas."""
    joined = ",".join(sorted(set(run_ids)))
    return f"reports/compare-{hashlib.sha256(joined.encode()).hexdigest()[:8]}"


def build_compare(records: list, out_dir: Path, *, baseline: str | None = None, metrics: list[str] | None = None,
                  html: bool = True) -> Path:
    """Write COMPARE.md (and COMPARE.html) and compare_figures/ into `out_dir`; return COMPARE.md's path.

    `baseline` is a run id (or a unique prefix of one) among the records; default the first record.
    `metrics` selects the summary keys of the metric table; default every key present in any run.
    """
    runs = list({r.run_id: r for r in records}.values())
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    base = _find_baseline(runs, baseline)
    out_dir = Path(out_dir)
    (out_dir / FIGURES_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / FIGURES_DIR).glob("*.png"):
        stale.unlink()
    keys = ordered_metric_keys(metrics if metrics else {k for r in runs for k in _metrics(r)})
    document = Document(
        f"mixvae compare: {len(runs)} runs",
        [Paragraph(f"{GENERATED_PREFIX}{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}"),
         Paragraph(f"Baseline: `{base.run_id}` ({base.run_name}).")],
        [_runs_section(runs, base), _params_section(runs), _metrics_section(runs, base, keys),
         _seed_section(runs, keys), _curves_section(runs, out_dir)],
    )
    compare_md = out_dir / "COMPARE.md"
    compare_md.write_text(document.to_markdown(), encoding="utf-8")
    if html:
        (out_dir / "COMPARE.html").write_text(document.to_html(out_dir), encoding="utf-8")
    return compare_md


# ------------------------------------------------------------------------------------------ helpers

def _find_baseline(runs: list, baseline: str | None):
    if baseline is None:
        return runs[0]
    matches = [r for r in runs if r.run_id == baseline] or [r for r in runs if r.run_id.startswith(baseline)]
    if len(matches) != 1:
        raise ValueError(f"baseline {baseline!r} matches {len(matches)} of the compared runs; give one of "
                         + ", ".join(r.run_id for r in runs))
    return matches[0]


def _metrics(record) -> dict:
    return dict(record.metrics or {}) or dict(((record.summary or {}).get("metrics")) or {})


def _label(record) -> str:
    return f"{record.run_name} ({record.run_id[:8]})"


def _config_values(record) -> dict[str, str]:
    """Dotted key → JSON text of the resolved config (params when config.yaml is missing); no tracking keys."""
    if record.config is not None:
        flat = {k: json.dumps(v, sort_keys=True) for k, v in flatten_dict(record.config).items()}
    else:
        flat = dict(record.params or {})
    return {k: v for k, v in flat.items() if not k.startswith("tracking.")}


def _seed(record) -> str:
    if record.config is not None:
        return fmt(((record.config.get("training") or {}).get("seed")))
    return (record.params or {}).get("training.seed", "—")


def _best_epoch(record) -> str:
    summary = record.summary or {}
    if summary.get("best_epoch") is not None:
        return fmt(int(summary["best_epoch"]))
    value = _metrics(record).get("training.best_epoch")
    return fmt(int(value)) if value is not None else "—"


def _digest(record) -> str | None:
    return ((record.summary or {}).get("data") or {}).get("digest") or (record.tags or {}).get("mixvae.dataset_digest")


# ------------------------------------------------------------------------------------------ sections

def _runs_section(runs: list, base) -> Section:
    rows = []
    for r in runs:
        tags = r.tags or {}
        rows.append([f"`{r.run_id}`" + (" (baseline)" if r is base else ""), r.run_name, r.status,
                     tags.get("mixvae.architecture", "—"), tags.get("mixvae.config_hash", "—"), _digest(r) or "—",
                     _seed(r), _best_epoch(r)])
    section = Section("Runs", [Table(["run id", "name", "status", "architecture", "config hash", "data digest",
                                      "training.seed", "best epoch"], rows)])
    digests = {_digest(r) for r in runs if _digest(r)}
    if len(digests) > 1:
        section.add(Paragraph("**Warning**: metrics use different data (data set digests differ: "
                              + ", ".join(f"{_label(r)} {_digest(r)}" for r in runs) + ")."))
    methods = {acc_method_of(r) for r in runs if acc_method_of(r)}
    if len(methods) > 1:
        section.add(Paragraph("**Warning**: clustering.acc is computed with different methods ("
                              + ", ".join(f"{_label(r)} {acc_method_of(r) or '—'}" for r in runs)
                              + "); purity grows with K and is not comparable with Hungarian accuracy."))
    return section


def _params_section(runs: list) -> Section:
    values = [_config_values(r) for r in runs]
    keys = sorted({k for v in values for k in v})
    rows = [[f"`{k}`"] + [clip(v.get(k, "—")) for v in values] for k in keys if len({v.get(k) for v in values}) > 1]
    section = Section("Parameter differences")
    if rows:
        return section.add(Table(["key"] + [_label(r) for r in runs], rows))
    return section.add(Paragraph("No resolved config key differs between the runs."))


def _delta_cell(key: str, value, base_value) -> str:
    if value is None or base_value is None:
        return "—"
    delta = float(value) - float(base_value)
    text = f"{delta:+.4g}"
    if base_value != 0:
        text += f" ({100 * delta / abs(float(base_value)):+.1f} %)"
    direction = direction_of(key)
    if delta != 0 and direction in ("min", "max"):
        text += " " + (BETTER if (delta < 0) == (direction == "min") else WORSE)
    return text


def _metrics_section(runs: list, base, keys: list[str]) -> Section:
    section = Section("Metrics")
    if not keys:
        return section.add(Paragraph("Skipped: no run has summary metrics."))
    methods = sorted({acc_method_of(r) for r in runs if acc_method_of(r)})
    others = [r for r in runs if r is not base]
    values = {r.run_id: _metrics(r) for r in runs}
    headers = ["metric"] + [_label(r) for r in runs] + [f"Δ {_label(r)} vs baseline" for r in others]
    rows = []
    for key in keys:
        label = f"{key} ({' / '.join(methods)})" if key == "clustering.acc" and methods else key
        row = [label] + [fmt(values[r.run_id].get(key)) for r in runs]
        row += [_delta_cell(key, values[r.run_id].get(key), values[base.run_id].get(key)) for r in others]
        rows.append(row)
    section.add(Paragraph(f"Bare summary keys; deltas against the baseline `{base.run_id[:8]}`, "
                          f"{BETTER} better, {WORSE} worse (by each key's declared direction)."))
    return section.add(Table(headers, rows))


def _seed_section(runs: list, keys: list[str]) -> Section:
    section = Section("Seed groups")
    groups: dict[str, list] = {}
    for r in runs:
        key = (r.tags or {}).get("mixvae.config_hash_noseed")
        if key:
            groups.setdefault(key, []).append(r)
    groups = {k: v for k, v in sorted(groups.items()) if len(v) >= 2}
    if not groups:
        return section.add(Paragraph("No seed groups: no two runs share `mixvae.config_hash_noseed`."))
    for group, members in groups.items():
        methods = sorted({acc_method_of(r) for r in members if acc_method_of(r)})
        rows = []
        for key in keys:
            present = [float(_metrics(r)[key]) for r in members if key in _metrics(r)]
            if len(present) >= 2:
                label = f"{key} ({' / '.join(methods)})" if key == "clustering.acc" and methods else key
                rows.append([label, _mean_std(present), str(len(present))])
        section.add(Paragraph(f"Group `{group}`: " + ", ".join(f"{_label(r)} seed {_seed(r)}" for r in members)),
                    _per_seed_table(members),
                    Table(["metric", "mean ± std", "n"], rows) if rows
                    else Paragraph("No summary key is present in two runs of this group."))
    return section


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(float(np.mean(values)))} ± {fmt(float(np.std(values, ddof=1)))}"


def _per_seed_table(members: list) -> Table:
    """One row per run of a seed group (by seed) with the headline keys any member logged, then mean ± std."""
    keys = [k for k in SEED_TABLE_KEYS if any(k in _metrics(r) for r in members)]
    ordered = sorted(members, key=lambda r: int(_seed(r)) if _seed(r).isdigit() else float("inf"))
    rows = [[_seed(r), f"`{r.run_id}`", r.status] + [fmt(_metrics(r).get(k)) for k in keys] for r in ordered]
    rows.append(["mean ± std", "", ""]
                + [_mean_std([float(_metrics(r)[k]) for r in members if k in _metrics(r)]) for k in keys])
    methods = sorted({acc_method_of(r) for r in members if acc_method_of(r)})
    labels = [f"{k} ({' / '.join(methods)})" if k == "clustering.acc" and methods else k for k in keys]
    return Table(["seed", "run id", "status"] + labels, rows)


def _curves_section(runs: list, out_dir: Path) -> Section:
    from .plots.common import new_figure, save, style

    section = Section("Curves")
    for filename, key, always in CURVES:
        series = [(r, sorted(r.histories.get(key) or [])) for r in runs]
        if not any(points for _, points in series):
            if always:
                section.add(Paragraph(f"`{key}`: no run has this history."))
            continue
        with style():
            fig, ax = new_figure(6.0, 3.2)
            for i, (r, points) in enumerate(series):
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2, color=f"C{i % 10}",
                            label=_label(r))
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            ax.set_title(key)
            ax.legend(fontsize=6)
            save(fig, out_dir / FIGURES_DIR / filename)
        section.add(Image(f"{FIGURES_DIR}/{filename}", key))
    return section
