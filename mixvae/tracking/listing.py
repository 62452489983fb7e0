"""`mixvae runs`: list runs from the tracking store, newest first. A RUNNING run whose process is
provably gone (ownership.py) shows as `RUNNING (stale: owner gone)`; `--format json` keeps the
status and adds `"stale": true`."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime

from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

from mixvae.tracking.connection import connect
from mixvae.tracking.ownership import owner_state
from mixvae.tracking.record import all_experiments as experiments_in
from mixvae.tracking.writer import RUN_STATUSES

DEFAULT_EXPERIMENT = "mixvae"
SUMMARY_COLUMNS = ("loss.total", "clustering.acc", "mixture.K_eff")
COLUMNS = ("RUN_ID", "NAME", "STATUS", "STARTED", "DURATION", "ARCH", *SUMMARY_COLUMNS)
# row dict key for each column
_ROW_KEYS = ("run_id", "name", "status", "started", "duration", "arch", *SUMMARY_COLUMNS)


class ListingError(ValueError):
    """A bad `--status` or `--filter` (exit 2 at the CLI)."""


def search_filter(status: str | None, user_filter: str | None, all_kinds: bool) -> str:
    """One MLflow filter string (MLflow filters only know AND, so the parts are joined)."""
    parts = []
    if not all_kinds:
        parts.append("tags.`mixvae.kind` = 'train'")
    if status:
        parts.append(f"attributes.status = '{status}'")
    if user_filter and user_filter.strip():
        parts.append(user_filter.strip())
    return " AND ".join(parts)


def format_duration(start_ms: int | None, end_ms: int | None) -> str:
    if not start_ms or not end_ms or end_ms < start_ms:
        return ""
    seconds = round((end_ms - start_ms) / 1000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_started(start_ms: int | None) -> str:
    """Local time, to the minute."""
    if not start_ms:
        return ""
    return datetime.fromtimestamp(start_ms / 1000).strftime("%Y-%m-%d %H:%M")


def run_row(run: Run, experiment_name: str) -> dict:
    info, data = run.info, run.data
    row = {
        "run_id": info.run_id,
        "name": info.run_name or "",
        "status": info.status,
        # RUNNING, but the process that trained it is provably gone (killed outright): resume it
        "stale": info.status == "RUNNING" and owner_state(data.tags) == "gone",
        "started": format_started(info.start_time),
        "duration": format_duration(info.start_time, info.end_time),
        "arch": data.tags.get("mixvae.architecture", ""),
    }
    for key in SUMMARY_COLUMNS:
        value = data.metrics.get(key)
        row[key] = None if value is None else float(value)
    row["experiment"] = experiment_name
    row["tags"] = dict(data.tags)
    return row


def list_runs(
    uri: str,
    experiments: Sequence[str] = (),
    all_experiments: bool = False,
    limit: int = 20,
    status: str | None = None,
    filter: str | None = None,  # noqa: A002 - the CLI option's name
    all_kinds: bool = False,
) -> list[dict]:
    """Rows of the newest runs. Unknown experiment names list nothing. Raises TrackingError
    when the store is unreachable and ListingError for a bad status or filter."""
    if status is not None:
        status = status.upper()
        if status not in RUN_STATUSES:
            raise ListingError(f"--status must be one of {', '.join(RUN_STATUSES)} (got {status!r})")
    if limit < 1:
        raise ListingError(f"--limit must be at least 1 (got {limit})")
    client = connect(uri)
    if all_experiments:
        found = experiments_in(client, ViewType.ACTIVE_ONLY)
    else:
        names = list(experiments) or [DEFAULT_EXPERIMENT]
        found = [e for e in (client.get_experiment_by_name(n) for n in names) if e is not None]
    names_by_id = {e.experiment_id: e.name for e in found}
    if not names_by_id:
        return []
    try:
        runs = client.search_runs(
            list(names_by_id),
            filter_string=search_filter(status, filter, all_kinds),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=limit,
            order_by=["attributes.start_time DESC"],
        )
    except MlflowException as exc:
        if exc.error_code == "INVALID_PARAMETER_VALUE":
            raise ListingError(f"invalid --filter {filter!r}: {exc.message}") from exc
        raise
    return [run_row(run, names_by_id[run.info.experiment_id]) for run in runs]


def _shown(row: dict, key: str):
    if key == "status" and row.get("stale"):
        return f"{row['status']} (stale: owner gone)"
    return row[key]


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[dict]) -> str:
    """Aligned columns; an empty listing is the header alone."""
    cells = [list(COLUMNS)] + [[_cell(_shown(row, k)) for k in _ROW_KEYS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines) + "\n"


def format_csv(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(["" if row[k] is None else _shown(row, k) for k in _ROW_KEYS])
    return out.getvalue()


def format_json(rows: Sequence[dict]) -> str:
    return json.dumps(list(rows), indent=2, sort_keys=False) + "\n"


FORMATTERS = {"table": format_table, "json": format_json, "csv": format_csv}


def format_rows(rows: Sequence[dict], fmt: str = "table") -> str:
    try:
        return FORMATTERS[fmt](rows)
    except KeyError:
        raise ListingError(f"--format must be one of {', '.join(FORMATTERS)} (got {fmt!r})") from None
