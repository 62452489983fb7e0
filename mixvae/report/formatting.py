"""How REPORT.md and COMPARE.md write things: numbers, sizes, times, and metric keys (their order,
family, direction and label)."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from mixvae.metrics.keys import FAMILIES, KEYS

GENERATED_PREFIX = "Generated: "


def fmt(value) -> str:
    """Floats with 4 significant digits; integers as integers; None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)


def clip(text: str, limit: int = 100) -> str:
    """One table cell: long values (a description, long lists) end in an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def fmt_bytes(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}"
    return str(size)


def fmt_utc(ms: int | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(start_ms: int | None, end_ms: int | None) -> str:
    if start_ms is None or end_ms is None:
        return "—"
    seconds = max(0.0, (end_ms - start_ms) / 1000)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min {seconds} s" if hours else f"{minutes} min {seconds} s"


# ------------------------------------------------------------------------------------- metric keys

def family_of(key: str) -> str:
    meta = KEYS.get(key)
    return meta.family if meta is not None else key.split(".", 1)[0]


def direction_of(key: str) -> str:
    """'min', 'max' or 'none' as declared in mixvae.metrics.keys; a key no longer declared (an
    older run's) reads loss.* as min, clustering.* as max, anything else as none."""
    meta = KEYS.get(key)
    if meta is not None:
        return meta.direction
    family = key.split(".", 1)[0]
    return {"loss": "min", "clustering": "max"}.get(family, "none")


def ordered_metric_keys(keys) -> list[str]:
    """Grouped by family in report order; within a family in declaration order, then by name."""
    declared = {name: i for i, name in enumerate(KEYS)}
    family_rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(keys, key=lambda k: (family_rank.get(family_of(k), len(FAMILIES)), family_of(k),
                                       declared.get(k, len(declared)), k))


def metric_label(key: str, acc_method: str | None) -> str:
    if key == "clustering.acc" and acc_method:
        return f"clustering.acc ({acc_method})"
    return key


def acc_method_of(record) -> str | None:
    summary = record.summary or {}
    return summary.get("clustering_acc_method") or (record.tags or {}).get("mixvae.clustering_acc_method")
