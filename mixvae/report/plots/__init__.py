"""Plot registry: the catalogue of figures in order, and `run_plots`.

Each entry names its file(s) under `figures/`, a config gate `applies(cfg) -> None | reason`, and a
draw function that takes the run's arrays (`PlotData`) and an output path — never a model. The
registry records one status per plot: success, disabled (gate), skipped (inputs missing) or failed
(raised, or wrote no file). A failing plot never stops the others.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import core, curriculum, mixture, tau, uncertainty
from .common import PlotData, PlotSkipped

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"


@dataclass
class PlotStatus:
    status: str                      # success | disabled | skipped | failed
    reason: str | None = None
    paths: list[str] = field(default_factory=list)   # relative to figures/


def _always(cfg) -> None:
    return None


@dataclass(frozen=True)
class PlotSpec:
    name: str
    file: str                                           # main file, relative to figures/
    draw: Callable[[PlotData, Path], None]
    gate: Callable[[object], str | None] = _always
    needs_diagnostics: bool = True                      # False: runs from histories alone
    files: Callable[[PlotData], list[str]] | None = None   # several files (component_latents)

    def expected_files(self, data: PlotData) -> list[str]:
        return self.files(data) if self.files else [self.file]


CATALOGUE: tuple[PlotSpec, ...] = (
    PlotSpec("loss_curves", "core/loss_curves.png", core.draw_loss_curves, needs_diagnostics=False),
    PlotSpec("reconstructions", "core/reconstructions.png", core.draw_reconstructions),
    PlotSpec("latent_space", "core/latent_space.png", core.draw_latent_space, core.gate_latent_dim),
    PlotSpec("latent_by_component", "mixture/latent_by_component.png", mixture.draw_latent_by_component,
             mixture.gate_mixture_scatter),
    PlotSpec("component_latents", f"{mixture.COMPONENT_LATENTS_DIR}/grid.png", mixture.draw_component_latents,
             mixture.gate_mixture_scatter, files=mixture.component_latent_files),
    PlotSpec("responsibility_histogram", "mixture/responsibility_histogram.png",
             mixture.draw_responsibility_histogram, mixture.gate_mixture_based),
    PlotSpec("mixture_evolution", "mixture/mixture_evolution.png", mixture.draw_mixture_evolution,
             mixture.gate_mixture_based),
    PlotSpec("component_embedding_divergence", "mixture/component_embedding_divergence.png",
             mixture.draw_component_embedding_divergence, mixture.gate_embeddings),
    PlotSpec("reconstruction_by_component", "mixture/reconstruction_by_component.png",
             mixture.draw_reconstruction_by_component, mixture.gate_component_reconstructions),
    PlotSpec("selected_vs_weighted", "mixture/selected_vs_weighted.png", mixture.draw_selected_vs_weighted,
             mixture.gate_component_reconstructions),
    PlotSpec("component_ownership", "mixture/component_ownership.png", mixture.draw_component_ownership,
             mixture.gate_mixture_based),
    PlotSpec("component_kl", "mixture/component_kl.png", mixture.draw_component_kl, mixture.gate_component_kl),
    PlotSpec("routing_hardness", "mixture/routing_hardness.png", mixture.draw_routing_hardness,
             mixture.gate_routing),
    PlotSpec("tau_matrix", "tau/tau_matrix.png", tau.draw_tau_matrix, tau.gate_tau),
    PlotSpec("tau_per_class_accuracy", "tau/per_class_accuracy.png", tau.draw_tau_per_class_accuracy, tau.gate_tau),
    PlotSpec("tau_certainty_calibration", "tau/certainty_calibration.png", tau.draw_tau_certainty_calibration,
             tau.gate_tau),
    PlotSpec("curriculum_k_active", "curriculum/k_active_over_time.png", curriculum.draw_curriculum_k_active,
             curriculum.gate_curriculum, needs_diagnostics=False),
    PlotSpec("sigma_histogram", "uncertainty/sigma_histogram.png", uncertainty.draw_sigma_histogram,
             uncertainty.gate_heteroscedastic),
)

PLOT_FILES: dict[str, str] = {spec.name: spec.file for spec in CATALOGUE}


def _status_of(spec: PlotSpec, data: PlotData, fig_dir: Path) -> PlotStatus:
    if data.cfg is None:
        if spec.name != "loss_curves":
            return PlotStatus("skipped", "run has no config.yaml")
    else:
        reason = spec.gate(data.cfg)
        if reason:
            return PlotStatus("disabled", reason)
    if spec.needs_diagnostics and data.diagnostics is None:
        return PlotStatus("skipped", f"run has no diagnostics (status {data.status})")
    try:
        files = spec.expected_files(data)
        for rel in files:
            (fig_dir / rel).unlink(missing_ok=True)
        spec.draw(data, fig_dir / spec.file)
    except PlotSkipped as skip:
        return PlotStatus("skipped", str(skip))
    except Exception as exc:  # a failing plot never fails the report
        log.debug("plot %s failed", spec.name, exc_info=True)
        message = " ".join(str(exc).split())
        return PlotStatus("failed", f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    missing = [rel for rel in files if not (fig_dir / rel).is_file() or (fig_dir / rel).stat().st_size == 0]
    if missing:
        return PlotStatus("failed", "no file written" if len(missing) == len(files)
                          else f"no file written: {', '.join(missing)}")
    return PlotStatus("success", None, list(files))


def run_plots(record, fig_dir: Path, progress=None, *, catalogue=CATALOGUE) -> dict[str, PlotStatus]:
    """Draw every catalogue plot for `record` into `fig_dir`, write `status.json`, return the statuses.

    `progress(done, total, name)` is called after each plot. Figures left by an earlier build are
    removed first, so a plot can only be `success` through a file it has just written.
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.rglob("*.png"):
        stale.unlink()
    data = PlotData.from_record(record)
    statuses: dict[str, PlotStatus] = {}
    for done, spec in enumerate(catalogue, start=1):
        statuses[spec.name] = _status_of(spec, data, fig_dir)
        if progress is not None:
            progress(done, len(catalogue), spec.name)
    (fig_dir / STATUS_FILE).write_text(
        json.dumps({name: asdict(status) for name, status in statuses.items()}, indent=2) + "\n")
    return statuses


__all__ = ["CATALOGUE", "PLOT_FILES", "PlotData", "PlotSkipped", "PlotSpec", "PlotStatus", "run_plots"]
