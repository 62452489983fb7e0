"""REPORT.md and REPORT.html for one run.

`build_report(record, out_dir)` is the one path used by `mixvae report RUN_ID` and by the end of
`mixvae train`: it reads only the RunRecord (loaded from MLflow), draws the plots, and renders one
`Document` (the sections of sections.py, in order) to Markdown and HTML. The `Generated: …` line
is the only line that changes between two builds of the same run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .document import Document, Paragraph, Section
from .formatting import GENERATED_PREFIX
from .plots import PlotStatus, run_plots
from .sections import ReportSections

log = logging.getLogger(__name__)

# The report's sections in order: (title, the ReportSections method that builds it).
SECTIONS = (
    ("Configuration", "configuration"),
    ("Results", "results"),
    ("Loss curves and stability", "loss_curves"),
    ("Reconstructions", "reconstructions"),
    ("Mixture routing hardness and specialization", "mixture"),
    ("τ classifier", "tau"),
    ("Component curriculum", "curriculum"),
    ("Uncertainty", "uncertainty"),
    ("Plot status", "plot_status"),
    ("Artifacts", "artifacts"),
)


@dataclass
class ReportResult:
    report_md: Path
    report_html: Path | None
    figures_dir: Path
    plot_status: dict[str, PlotStatus]


def build_report(record, out_dir: Path, *, html: bool = True, progress=None) -> ReportResult:
    """Draw the figures and write REPORT.md (and REPORT.html) for one run into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "figures"
    statuses = run_plots(record, fig_dir, progress)
    document = report_document(record, statuses, generated=datetime.now(timezone.utc))
    report_md = out_dir / "REPORT.md"
    report_md.write_text(document.to_markdown(), encoding="utf-8")
    report_html = None
    if html:
        report_html = out_dir / "REPORT.html"
        report_html.write_text(document.to_html(out_dir), encoding="utf-8")
    return ReportResult(report_md, report_html, fig_dir, statuses)


def strip_generated(text: str) -> str:
    """The report without its generation-timestamp line (what determinism tests compare)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith(GENERATED_PREFIX))


def report_document(record, statuses: dict[str, PlotStatus], generated: datetime) -> Document:
    """The report of one run as a Document (its sections in order). One section that fails to
    build holds the reason instead; it never costs the whole report."""
    stamp = generated.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    builder = ReportSections(record, statuses, stamp)
    sections = []
    for title, method in SECTIONS:
        try:
            sections.append(getattr(builder, method)())
        except Exception as exc:  # one broken section must not cost the whole report
            log.warning("report section %r failed: %s", title, exc, exc_info=True)
            sections.append(Section(title, [Paragraph(
                f"Skipped: this section could not be built ({type(exc).__name__}: {exc}).")]))
    return Document(f"mixvae report: {record.run_name}", builder.header(), sections)
