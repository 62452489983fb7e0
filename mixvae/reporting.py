"""The one report path of a run, and of a sweep: load it from MLflow, build the report, log it back.

`mixvae train` (at the end of a run), `mixvae report` and `mixvae sweep` all go through these two
functions, so a report built later from the logged run is the report the run built.
"""

from __future__ import annotations

import time
from pathlib import Path

from mixvae import paths
from mixvae.console import Console


def build_report_for_run(run_id: str, uri: str, report_dir: str, *, html: bool, console: Console | None,
                         writer=None, final_status: str | None = None, out_dir: Path | None = None,
                         upload: bool = True) -> tuple[Path, str]:
    """The one report path: load the run from MLflow, build figures and REPORT.md, log them back.
    Returns (path of REPORT.md, full run id)."""
    from mixvae.report import build_report
    from mixvae.tracking.artifacts import upload_dir
    from mixvae.tracking.record import load_run

    if writer is not None:
        writer.flush()
    record = load_run(run_id, uri)
    if final_status:  # built just before the run is ended: show the status and end it will get
        record.status = final_status
        record.end_time = record.end_time or int(time.time() * 1000)
    out_dir = Path(out_dir or paths.under_work_dir(report_dir) / record.run_id)
    started = time.perf_counter()

    def progress(done, total, name):
        if console is not None:
            console.bar(done, total, started, "plots")
    result = build_report(record, out_dir, html=html, progress=progress)
    if console is not None:
        console.end_bar()
    if upload:
        upload_dir(record.run_id, out_dir, None, uri=uri)
    return Path(result.report_md), record.run_id


def build_sweep_report_for_run(parent_id: str, uri: str, report_dir: str, *, html: bool, out_dir: Path | None = None,
                               upload: bool = True, final_status: str | None = None) -> Path:
    """A sweep's report from its parent run and trial runs in MLflow, logged back to the parent → REPORT.md."""
    from mixvae.report.sweep import build_sweep_report
    from mixvae.tracking.artifacts import upload_files
    from mixvae.tracking.sweep_record import load_sweep
    record = load_sweep(parent_id, uri)
    if final_status:  # built just before the parent is ended: show the status and end it will get
        record.status, record.end_time = final_status, record.end_time or int(time.time() * 1000)
    out = Path(out_dir or paths.under_work_dir(report_dir) / record.run_id)
    report_md = build_sweep_report(record, out, html=html)
    if upload:
        upload_files(record.run_id, [report_md, out / "figures"] + [out / "REPORT.html"] * html, uri=uri)
    return report_md
