"""Figures, REPORT.md/.html and COMPARE.md built from MLflow runs.

Everything here reads a `RunRecord` (see docs/architecture.md) and never a model; matplotlib is
imported only when a figure is drawn.

- build.py       build_report: plots, then the sections in order, rendered to Markdown and HTML
- sections.py    the sections of REPORT.md
- health.py      training-health diagnosis: the alarms (collapse, dead components, overfitting, …)
- config_diff.py the resolved keys that differ from the schema default
- formatting.py  numbers, sizes, times and metric keys as the reports write them
- document.py    the small document model and its Markdown and HTML renderers
- compare.py     build_compare: COMPARE.md for two or more runs
- sweep.py       build_sweep_report: REPORT.md of a sweep (its figures in sweep_plots.py)
- plots/         the figure catalogue and the figures
"""

from .build import ReportResult, build_report
from .compare import build_compare, default_compare_dir
from .plots import PlotStatus, run_plots
from .sweep import build_sweep_report

__all__ = ["PlotStatus", "ReportResult", "build_compare", "build_report", "build_sweep_report", "default_compare_dir",
           "run_plots"]
