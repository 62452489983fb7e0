"""REPORT.md / REPORT.html, the plot registry and the training-health alarms on realistic synthetic runs."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from report_fixtures import SCENARIOS, record, resolved_config

from mixvae.report import PlotStatus, build_report, run_plots
from mixvae.report.build import GENERATED_PREFIX, report_document, strip_generated
from mixvae.report.plots import CATALOGUE, PlotSpec
from mixvae.report.plots.common import resolve_config

SECTIONS = ["## Configuration", "## Results", "## Loss curves and stability", "## Reconstructions",
            "## Mixture routing hardness and specialization", "## τ classifier", "## Component curriculum",
            "## Uncertainty", "## Plot status", "## Artifacts"]
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")
MIXTURE_PLOTS = ["latent_by_component", "component_latents", "responsibility_histogram", "mixture_evolution",
                 "component_embedding_divergence", "reconstruction_by_component", "selected_vs_weighted",
                 "component_ownership", "component_kl", "routing_hardness"]


def assert_png_not_blank(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path
    pixels = imread(path)
    assert (pixels != pixels[0, 0]).any(), f"{path} is a single colour"


@pytest.fixture(scope="session")  # session: built once even if other modules' tests run in between
def reports(tmp_path_factory):
    """One full build (plots, REPORT.md, REPORT.html) per scenario, shared by the tests below."""
    out = {}
    for name in SCENARIOS:
        rec = record(name)
        result = build_report(rec, tmp_path_factory.mktemp(name))
        out[name] = (rec, result, result.report_md.read_text(encoding="utf-8"))
    return out


def tables(markdown: str, section: str) -> list[list[list[str]]]:
    """The Markdown tables of one section, each as its rows of cells (header row dropped)."""
    found = []
    for block in section_text(markdown, section).split("\n\n"):
        lines = [line for line in block.strip().splitlines() if line.startswith("|")]
        if lines:
            found.append([[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]])
    return found


def table_rows(markdown: str, section: str) -> list[list[str]]:
    return [row for table in tables(markdown, section) for row in table]


def section_text(markdown: str, section: str) -> str:
    return markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]


# --------------------------------------------------------------------------------------- structure

@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_section_is_present_in_order(reports, name):
    rec, result, md = reports[name]
    assert md.startswith(f"# mixvae report: {rec.run_name}\n")
    positions = [md.index(f"\n{title}\n") for title in SECTIONS]
    assert positions == sorted(positions)
    assert "could not be built" not in md
    assert sum(line.startswith(GENERATED_PREFIX) for line in md.splitlines()) == 1


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_linked_image_exists_and_is_not_blank(reports, name):
    _, result, md = reports[name]
    links = IMAGE_LINK.findall(md)
    assert links, "a report always has at least the loss curves"
    for link in links:
        assert link.startswith("figures/")
        assert_png_not_blank(result.report_md.parent / link)
    for status in result.plot_status.values():            # multi-file plots: every listed file
        if status.status == "success":
            for rel in status.paths:
                assert_png_not_blank(result.figures_dir / rel)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_status_json_and_status_table_agree_with_the_registry(reports, name):
    _, result, md = reports[name]
    stored = json.loads((result.figures_dir / "status.json").read_text())
    assert list(stored) == [spec.name for spec in CATALOGUE]
    rows = table_rows(md, "Plot status")
    assert [r[0] for r in rows] == [spec.name for spec in CATALOGUE]
    for row, spec in zip(rows, CATALOGUE):
        status = result.plot_status[spec.name]
        assert stored[spec.name] == {"status": status.status, "reason": status.reason, "paths": status.paths}
        assert row[1] == f"`{spec.file}`"
        assert row[2] == status.status
        assert row[3] == (status.reason or "")
        if status.status == "success":
            assert spec.file in status.paths
        else:
            assert status.reason and status.paths == []


# ------------------------------------------------------------------------------------------ gates

def test_full_mixture_run_draws_every_mixture_plot(reports):
    _, result, md = reports["mixture_gumbel"]
    for name in ["loss_curves", "reconstructions", "latent_space"] + MIXTURE_PLOTS:
        assert result.plot_status[name].status == "success", (name, result.plot_status[name])
    component_files = result.plot_status["component_latents"].paths
    assert component_files == ["mixture/component_latents/grid.png"] + [
        f"mixture/component_latents/component_{k:02d}.png" for k in range(10)]
    assert result.plot_status["tau_matrix"].reason == "model.use_tau_classifier is false"
    assert result.plot_status["curriculum_k_active"].reason == "curriculum.enabled is false"
    assert result.plot_status["sigma_histogram"].reason == "model.use_heteroscedastic_decoder is false"


def test_conditioning_none_with_shared_layout_disables_the_component_plots(reports):
    _, result, md = reports["conditioning_none"]
    status = result.plot_status
    assert (status["component_embedding_divergence"].status,
            status["component_embedding_divergence"].reason) == (
        "disabled", "decoder_conditioning is 'none': embeddings are unused")
    for name in ("reconstruction_by_component", "selected_vs_weighted"):
        assert (status[name].status, status[name].reason) == (
            "disabled", "all components decode identically (shared layout, decoder_conditioning none)")
    assert (status["component_ownership"].status, status["component_ownership"].reason) == (
        "skipped", "the split has no labels")
    assert status["component_kl"].reason == "latent_layout is 'shared': no per-component latents"
    assert status["routing_hardness"].reason == "use_gumbel_softmax is false: routing equals responsibilities"
    assert status["latent_space"].status == "success"          # unlabeled points are drawn grey
    mixture = section_text(md, "Mixture routing hardness and specialization")
    assert ("`component_embedding_divergence`: disabled — decoder_conditioning is 'none': embeddings are unused."
            in mixture)


def test_standard_prior_gets_latent_space_only(reports):
    _, result, md = reports["standard"]
    status = result.plot_status
    for name in ("latent_by_component", "component_latents", "responsibility_histogram", "mixture_evolution",
                 "component_ownership"):
        assert (status[name].status, status[name].reason) == (
            "disabled", "requires a mixture-based prior (prior_type is 'standard')")
    assert status["component_embedding_divergence"].reason == "prior_type 'standard' has no component embeddings"
    mixture = section_text(md, "Mixture routing hardness and specialization")
    assert "Not applicable: prior_type is 'standard'." in mixture
    assert IMAGE_LINK.findall(mixture) == ["figures/core/latent_space.png"]
    assert "PC1" not in md                                      # axis titles live in the figure, not the text


def test_tau_curriculum_and_uncertainty_runs_draw_their_plots(reports):
    tau = reports["tau"][1].plot_status
    for name in ("tau_matrix", "tau_per_class_accuracy", "tau_certainty_calibration"):
        assert tau[name].status == "success", tau[name]
    assert reports["curriculum"][1].plot_status["curriculum_k_active"].status == "success"
    hetero = reports["heteroscedastic"][1].plot_status
    assert hetero["sigma_histogram"].status == "success"
    assert hetero["reconstruction_by_component"].status == "success"


def test_gate_reasons_for_vamp_and_one_dimensional_latents():
    gates = {spec.name: spec.gate for spec in CATALOGUE}
    vamp = resolve_config(resolved_config({"model.prior_type": "vamp", "model.num_components": 50,
                                           "model.latent_dim": 8}))
    assert gates["component_embedding_divergence"](vamp) == "prior_type 'vamp' has no component embeddings"
    assert gates["responsibility_histogram"](vamp) is None
    assert gates["component_ownership"](vamp) is None
    one_d = resolve_config(resolved_config({"model.latent_dim": 1}))
    for name in ("latent_space", "latent_by_component", "component_latents"):
        assert gates[name](one_d) == "latent_dim is 1"
    assert gates["responsibility_histogram"](one_d) is None


# ------------------------------------------------------------------------------ failure behaviour

def test_failed_run_without_diagnostics_still_gets_a_report(reports):
    rec, result, md = reports["failed"]
    assert rec.diagnostics is None and rec.summary is None
    for spec in CATALOGUE:
        status = result.plot_status[spec.name]
        if spec.name == "loss_curves":
            assert status.status == "success"
        elif status.status != "disabled":
            assert (status.status, status.reason) == ("skipped", "run has no diagnostics (status FAILED)")
    assert "Skipped: run has no diagnostics (status FAILED)." in section_text(md, "Reconstructions")
    assert "Skipped: run has no diagnostics (status FAILED)." in section_text(
        md, "Mixture routing hardness and specialization")
    assert "Skipped: run has no summary metrics (status FAILED)." in section_text(md, "Results")
    assert "RuntimeError: synthetic failure in epoch 4" in md
    assert "at epoch 4)" in section_text(md, "Loss curves and stability")      # best so far from the history


def test_a_plot_that_raises_is_failed_and_the_report_still_builds(tmp_path):
    rec = record("heteroscedastic")
    rec.diagnostics["embeddings"] = np.zeros(3, dtype=np.float32)     # malformed: 1-D instead of [K, E]
    result = build_report(rec, tmp_path)
    status = result.plot_status["component_embedding_divergence"]
    assert status.status == "failed"
    assert re.match(r"[A-Za-z]+Error: ", status.reason), status.reason
    assert not (tmp_path / "figures/mixture/component_embedding_divergence.png").exists()
    md = result.report_md.read_text()
    assert ["component_embedding_divergence", "`mixture/component_embedding_divergence.png`", "failed",
            status.reason] in table_rows(md, "Plot status")
    assert result.plot_status["sigma_histogram"].status == "success"
    assert result.plot_status["reconstruction_by_component"].status == "success"


def test_a_plot_that_writes_nothing_is_failed_even_with_a_stale_file(tmp_path):
    stale = tmp_path / "core" / "noop.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old figure from an earlier build")
    catalogue = (PlotSpec("noop", "core/noop.png", lambda data, path: None, needs_diagnostics=False),)
    statuses = run_plots(record("failed"), tmp_path, catalogue=catalogue)
    assert statuses == {"noop": PlotStatus("failed", "no file written", [])}
    assert not stale.exists()


def test_progress_is_reported_once_per_plot_in_catalogue_order(tmp_path):
    calls = []
    run_plots(record("failed"), tmp_path, progress=lambda done, total, name: calls.append((done, total, name)))
    assert calls == [(i + 1, len(CATALOGUE), spec.name) for i, spec in enumerate(CATALOGUE)]


# --------------------------------------------------------------------------- determinism and html

def test_report_is_deterministic_apart_from_the_generated_line(reports, tmp_path):
    _, first, md = reports["conditioning_none"]
    second = build_report(record("conditioning_none"), tmp_path)
    again = second.report_md.read_text()
    assert strip_generated(again) == strip_generated(md)
    differing = [a for a, b in zip(md.splitlines(), again.splitlines()) if a != b]
    assert all(line.startswith(GENERATED_PREFIX) for line in differing)
    assert json.loads((second.figures_dir / "status.json").read_text()) == json.loads(
        (first.figures_dir / "status.json").read_text())


def test_html_is_standalone_with_base64_images(reports):
    _, result, md = reports["mixture_gumbel"]
    page = result.report_html.read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(IMAGE_LINK.findall(md))
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page
    assert "<h2>Plot status</h2>" in page and "<code>" in page
    assert page.count("Generated:") == 1


# ------------------------------------------------------------------------------------ the content

def test_results_table_groups_families_and_labels_the_accuracy_method(reports):
    md = reports["mixture_gumbel"][2]
    rows, status_rows = tables(md, "Results")
    families = [r[0] for r in rows]
    order = ["loss", "clustering", "classifier", "tau", "mixture", "latent", "uncertainty", "curriculum", "training"]
    seen = [f for i, f in enumerate(families) if i == 0 or families[i - 1] != f]
    assert seen == [f for f in order if f in seen]                              # contiguous, in order
    assert ["clustering", "clustering.acc (hungarian)", "0.8123"] in rows       # 0.812345, 4 significant digits
    assert ["training", "training.steps_per_sec", "181.2"] in rows
    assert ["mixture.pi_entropy", "disabled", "π is fixed and uniform (model.learnable_pi is false)"] in status_rows
    assert "clustering.acc (purity)" in reports["tau"][2]                       # K = 12 ≠ C = 10


def test_configuration_lists_only_real_changes(reports):
    pytest.importorskip("mixvae.config")
    rows = table_rows(reports["mixture_gumbel"][2], "Configuration")
    keys = {r[0].strip("`"): r[1:] for r in rows}
    assert keys["model.latent_layout"] == ['"decentralized"', '"shared"']
    assert keys["training.max_epochs"] == ["30", "200"]
    assert keys["model.component_embedding_dim"] == ["16", "null"]
    assert "model.decoder_conditioning" not in keys                 # cin is the derived value of auto
    assert "experiment.name" not in keys                            # equals the config file stem
    assert "model.num_components" not in keys
    assert not any(k.startswith("tracking.") for k in keys)


def test_curriculum_section_lists_the_events_and_closed_components(reports):
    md = reports["curriculum"][2]
    curriculum = section_text(md, "Component curriculum")
    events = tables(md, "Component curriculum")[0]
    assert ["6", "unlock", "1", "2"] == events[0][:4]
    assert events[-1][1] == "stop" and events[-1][5] == "no_improvement"
    assert "Stop reason: no_improvement." in curriculum
    assert "figures/curriculum/k_active_over_time.png" in curriculum
    components = section_text(md, "Mixture routing hardness and specialization")
    assert "| 3 | " in components and "| closed |" in components
    assert "Not applicable: curriculum.enabled is false." in section_text(reports["tau"][2], "Component curriculum")


def _document(rec, statuses=None) -> str:
    return report_document(rec, statuses or {}, datetime(2024, 1, 1, tzinfo=timezone.utc)).to_markdown()


def test_no_alarm_for_a_healthy_run(reports):
    assert "No alarm triggered." in section_text(reports["mixture_gumbel"][2], "Results")


def test_alarms_fire_on_collapse_dead_components_and_saturation():
    rec = record("heteroscedastic")
    rec.metrics.update({"mixture.K_eff": 1.2, "mixture.active_components": 1.0, "mixture.dead_components": 8.0,
                        "latent.active_units": 0.0, "uncertainty.sigma_saturation": 0.7})
    resp = np.zeros_like(rec.diagnostics["responsibilities"])
    resp[:, 0], resp[:, 1] = 0.1, 0.9
    resp[:, 2:] = 0.0
    resp[:5, 2] = 1.0
    resp[:5, 1] = 0.0
    rec.diagnostics["responsibilities"] = resp               # components 3…9 never win the argmax
    alarms = section_text(_document(rec), "Results").split("**Alarms**", 1)[1]
    assert "mixture collapse: 10 open components but mixture.K_eff = 1.2" in alarms
    assert "dead components: 8 open component(s) are nobody's argmax (components 0, 3, 4, 5, 6, 7, 8, 9)" in alarms
    assert "posterior collapse: latent.active_units = 0" in alarms
    assert "σ saturation: uncertainty.sigma_saturation = 0.7" in alarms


def test_alarms_fire_on_overfitting_and_kl_collapse():
    rec = record("mixture_gumbel")
    rec.histories["val/loss.total"] = [(e, v * 1.5) for e, v in rec.histories["val/loss.total"]]
    rec.metrics["loss.kl_z"] = 0.001
    alarms = section_text(_document(rec), "Results").split("**Alarms**", 1)[1]
    assert "overfitting: at best epoch 14, val/loss.total" in alarms
    assert "posterior collapse: loss.kl_z / kl_weight = 0.001 < 0.01 × D = 0.02" in alarms


def test_no_early_stop_alarm_when_still_improving_at_max_epochs(reports):
    alarms = section_text(reports["conditioning_none"][2], "Results").split("**Alarms**", 1)[1]
    assert "no early stop: training ended at max_epochs (30) while val/loss.total was still improving" in alarms


def test_artifacts_section_names_the_model_and_registration():
    rec = record("standard")
    rec.tags["mixvae.registered_model"] = "mixvae-digits/3@candidate"
    artifacts = section_text(_document(rec), "Artifacts")
    assert "| `diagnostics/eval.npz` | 179.1 KiB |" in artifacts
    assert "Logged model: `models:/m-0123abcd`" in artifacts
    assert "Registered model: `mixvae-digits` version 3, alias `candidate`" in artifacts


def test_header_shows_status_reason_split_sizes_and_digest(reports):
    md = reports["failed"][2]
    header = md.split("## Configuration", 1)[0]
    assert "| status | FAILED — RuntimeError: synthetic failure in epoch 4 |" in header
    assert "1437/180/180" in header and "digest 1a2b3c4d" in header
    full = reports["heteroscedastic"][2].split("## Configuration", 1)[0]
    assert "digits 8x8x1 · train 1437 / val 180 / test 180 · labeled 0 · digest 1a2b3c4d" in full
    assert "| summary split · best epoch | test · 14 |" in full
    assert "| started | 2023-11-14 22:13:20 UTC |" in full and "| duration | 1 min 14 s |" in full


def test_a_config_that_no_longer_validates_still_drives_the_gates():
    stored = resolved_config({"model.decoder_conditioning": "none"})
    stored["model"]["retired_key"] = 3                     # e.g. a run logged by an older mixvae
    stored["model"]["decoder_conditioning"] = "auto"
    cfg = resolve_config(stored)
    gates = {spec.name: spec.gate for spec in CATALOGUE}
    assert cfg.model.decoder_conditioning == "cin"           # auto resolved for a component-decoding prior
    assert gates["component_embedding_divergence"](cfg) is None
    assert gates["component_kl"](cfg) == "latent_layout is 'shared': no per-component latents"
