"""Figures, REPORT.md/.html and COMPARE.md built from MLflow runs.

Everything here reads a `RunRecord` (see docs/architecture.md) and never a model; matplotlib is
imported only when a figure is drawn.
"""

from .build import ReportResult, build_report
from .compare import build_compare, default_compare_dir
from .plots import PlotStatus, run_plots

__all__ = ["PlotStatus", "ReportResult", "build_compare", "build_report", "default_compare_dir", "run_plots"]
