"""REPORT.md and REPORT.html for one run.

`build_report(record, out_dir)` is the one path used by `mixvae report RUN_ID` and by the end of
`mixvae train`: it reads only the RunRecord (loaded from MLflow), draws the plots, and renders one
`Document` to Markdown and HTML. Every section is always present, in order; a section that
does not apply holds `Not applicable: <reason>.`, one whose inputs are missing `Skipped: <reason>.`
The `Generated: …` line is the only line that changes between two builds of the same run.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .document import BulletList, Document, Image, Paragraph, Section, Table
from .plots import CATALOGUE, PLOT_FILES, PlotData, PlotStatus, run_plots
from .plots.common import is_mixture_based

log = logging.getLogger(__name__)

GENERATED_PREFIX = "Generated: "
FAMILY_ORDER = ("loss", "clustering", "classifier", "tau", "mixture", "latent", "uncertainty", "curriculum",
                "training")
# Resolved keys whose schema default is `auto`/null and whose derived value is not a change.
DERIVED_DEFAULTS = {
    "model.decoder_conditioning": lambda c: "cin" if c["model"]["prior_type"] in ("mixture", "geometric_mog")
    else "none",
    "model.component_embedding_dim": lambda c: c["model"]["latent_dim"],
    "curriculum.k_active_max": lambda c: c["model"]["num_components"],
}


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


# ===================================================================================== formatting

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


# ============================================================================ metric key metadata

def metric_keys() -> dict:
    try:
        from mixvae.metrics.keys import KEYS
        return KEYS
    except ImportError:
        return {}


def family_of(key: str) -> str:
    meta = metric_keys().get(key)
    return meta.family if meta is not None else key.split(".", 1)[0]


def direction_of(key: str) -> str:
    """'min', 'max' or 'none' as declared in mixvae.metrics.keys (loss.* min, clustering.* max otherwise)."""
    meta = metric_keys().get(key)
    if meta is not None:
        return meta.direction
    family = key.split(".", 1)[0]
    return {"loss": "min", "clustering": "max"}.get(family, "none")


def ordered_metric_keys(keys) -> list[str]:
    """Grouped by family in report order; within a family in declaration order, then by name."""
    declared = {name: i for i, name in enumerate(metric_keys())}
    family_rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(keys, key=lambda k: (family_rank.get(family_of(k), len(FAMILY_ORDER)), family_of(k),
                                       declared.get(k, len(declared)), k))


def metric_label(key: str, acc_method: str | None) -> str:
    if key == "clustering.acc" and acc_method:
        return f"clustering.acc ({acc_method})"
    return key


def acc_method_of(record) -> str | None:
    summary = record.summary or {}
    return summary.get("clustering_acc_method") or (record.tags or {}).get("mixvae.clustering_acc_method")


# ================================================================================= config helpers

def flatten_config(config: dict, leaf_keys=None, prefix: str = "") -> dict[str, object]:
    """Nested config → {dotted key: value}; maps that are values (experiment.tags) stay whole."""
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        is_leaf = path in leaf_keys if leaf_keys is not None else path == "experiment.tags"
        if isinstance(value, dict) and not is_leaf:
            out.update(flatten_config(value, leaf_keys, path + "."))
        else:
            out[path] = value
    return out


def schema_defaults() -> dict | None:
    try:
        from mixvae.config import defaults_flat
        return dict(defaults_flat())
    except Exception as exc:  # ImportError while config.py is missing
        log.debug("schema defaults unavailable: %s", exc)
        return None


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True) or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
        and not isinstance(b, bool) and float(a) == float(b))


def config_differences(config: dict, defaults: dict, config_name: str | None = None) -> list[tuple[str, str, str]]:
    """(key, value, default) as JSON text for every non-tracking key that differs from the default.

    Keys whose default is derived (`auto`/null) count as changed only when they differ from the
    derived value; `experiment.name` defaults to the config file stem (tag mixvae.config_name).
    """
    values = flatten_config(config, leaf_keys=set(defaults))
    rows = []
    for key in sorted(values):
        if key.startswith("tracking."):
            continue
        value = values[key]
        if key not in defaults:
            rows.append((key, json.dumps(value), "—"))
            continue
        default = defaults[key]
        if key == "experiment.name" and default is None and value == config_name:
            continue
        if key in DERIVED_DEFAULTS and default in (None, "auto"):
            try:
                if _same(value, DERIVED_DEFAULTS[key](config)):
                    continue
            except (KeyError, TypeError):
                pass
        if not _same(value, default):
            rows.append((key, json.dumps(value), json.dumps(default)))
    return rows


# ===================================================================================== the report

class _Report:
    """Builds the report's sections from one record and its plot statuses."""

    def __init__(self, record, statuses: dict[str, PlotStatus]):
        self.record = record
        self.statuses = statuses
        self.data = PlotData.from_record(record)
        self.cfg = self.data.cfg
        self.summary = record.summary or None
        self.metrics = self.data.metrics
        self.tags = record.tags or {}
        self.acc_method = acc_method_of(record)
        self.no_diagnostics = f"run has no diagnostics (status {record.status})"

    # ---------------------------------------------------------------------------- shared pieces
    def figure(self, name: str):
        status = self.statuses.get(name)
        if status is not None and status.status == "success":
            return Image(f"figures/{PLOT_FILES[name]}", name)
        if status is None:
            return Paragraph(f"`{name}`: not drawn.")
        return Paragraph(f"`{name}`: {status.status} — {status.reason}.")

    def metric_table(self, keys) -> Table:
        return Table(["metric", "value"], [[metric_label(k, self.acc_method), fmt(self.metrics[k])]
                                           for k in ordered_metric_keys(keys)])

    def keys_with_prefix(self, *prefixes) -> list[str]:
        return [k for k in self.metrics if k.startswith(prefixes)]

    def model(self, name, default=None):
        return getattr(self.cfg.model, name, default) if self.cfg is not None else default

    @property
    def best_epoch(self):
        return self.data.best_epoch

    def monitor(self) -> tuple[str, str]:
        key = self.cfg.training.monitor if self.cfg is not None else "val/loss.total"
        mode = self.cfg.training.monitor_mode if self.cfg is not None else "auto"
        if mode == "auto":
            mode = direction_of(key.split("/", 1)[-1])
            mode = mode if mode in ("min", "max") else "min"
        return key, mode

    # ---------------------------------------------------------------------------------- header
    def header(self) -> list:
        r, tags, summary = self.record, self.tags, self.summary or {}
        status = r.status
        if status != "FINISHED" and tags.get("mixvae.status_reason"):
            status += f" — {tags['mixvae.status_reason']}"
        commit = tags.get("mixvae.git_commit", "unknown")
        if str(tags.get("mixvae.git_dirty", "")).lower() == "true":
            commit += " (dirty)"
        version = tags.get("mixvae.version") or (summary.get("versions") or {}).get("mixvae", "—")
        split = summary.get("summary_split") or tags.get("mixvae.summary_split") or "—"
        best = self.best_epoch
        rows = [
            ["run id", f"`{r.run_id}`"],
            ["experiment", r.experiment_name],
            ["status", status],
            ["started", fmt_utc(r.start_time)],
            ["duration", fmt_duration(r.start_time, r.end_time)],
            ["git commit", commit],
            ["mixvae version", version],
            ["architecture", tags.get("mixvae.architecture", "—")],
            ["config hash", tags.get("mixvae.config_hash", "—")],
            ["data set", self.dataset_line()],
            ["summary split · best epoch", f"{split} · {best if best is not None else '—'}"],
        ]
        blocks = [Table(["field", "value"], rows), Paragraph(f"{GENERATED_PREFIX}{self.generated}")]
        description = ""
        if self.cfg is not None:
            description = getattr(self.cfg.experiment, "description", "") or ""
        description = description or tags.get("mlflow.note.content", "")
        if description.strip():
            blocks.append(Paragraph(description.strip()))
        return blocks

    def dataset_line(self) -> str:
        data = (self.summary or {}).get("data") or {}
        name = data.get("dataset") or self.tags.get("mixvae.dataset", "—")
        parts = [str(name)]
        if data.get("shape"):
            parts[0] += " " + "x".join(str(v) for v in data["shape"])
        if "n_train" in data:
            parts.append(f"train {data['n_train']} / val {data.get('n_val', '—')} / test {data.get('n_test', '—')}")
        elif self.tags.get("mixvae.split_sizes"):
            parts.append("train/val/test " + self.tags["mixvae.split_sizes"])
        if "n_labeled" in data:
            parts.append(f"labeled {data['n_labeled']}")
        digest = data.get("digest") or self.tags.get("mixvae.dataset_digest")
        if digest:
            parts.append(f"digest {digest}")
        return " · ".join(parts)

    # --------------------------------------------------------------------------- configuration
    def configuration(self) -> Section:
        section = Section("Configuration")
        if self.record.config is None:
            return section.add(Paragraph("Skipped: run has no config.yaml."))
        defaults = schema_defaults()
        if defaults is None:
            section.add(Paragraph("Schema defaults are unavailable (mixvae.config.defaults_flat could not be "
                                  "imported), so the keys that differ from them cannot be listed."))
        else:
            rows = config_differences(self.record.config, defaults, self.tags.get("mixvae.config_name"))
            if rows:
                section.add(Paragraph("Resolved keys that differ from the schema default (tracking keys excluded):"),
                            Table(["key", "value", "default"], [[f"`{k}`", clip(v), clip(d)] for k, v, d in rows]))
            else:
                section.add(Paragraph("Every resolved key has its schema default (tracking keys excluded)."))
        overrides = self.tags.get("mixvae.overrides", "")
        section.add(Paragraph(f"Overrides: `{overrides}`" if overrides else "Overrides: none."))
        if self.summary is None:
            section.add(Paragraph("Validation warnings: unknown (run has no summary.json)."))
        elif self.summary.get("warnings"):
            section.add(Paragraph("Validation warnings:"), BulletList(list(self.summary["warnings"])))
        else:
            section.add(Paragraph("Validation warnings: none."))
        return section.add(Paragraph("Full resolved config: artifact `config.yaml`."))

    # --------------------------------------------------------------------------------- results
    def results(self) -> Section:
        section = Section("Results")
        if not self.metrics:
            return section.add(Paragraph(f"Skipped: run has no summary metrics (status {self.record.status})."))
        rows = [[family_of(k), metric_label(k, self.acc_method), fmt(self.metrics[k])]
                for k in ordered_metric_keys(self.metrics)]
        split = (self.summary or {}).get("summary_split", "summary")
        section.add(Paragraph(f"Summary metrics on the {split} split at the restored best epoch:"),
                    Table(["family", "metric", "value"], rows))
        statuses = (self.summary or {}).get("metrics_status") or {}
        if statuses:
            section.add(Paragraph("Disabled, skipped and failed metrics:"),
                        Table(["metric", "status", "reason"],
                              [[k, str(v.get("status")), str(v.get("reason"))] for k, v in sorted(statuses.items())]))
        alarms = self.alarms()
        section.add(Paragraph("**Alarms**"))
        section.add(BulletList(alarms) if alarms else Paragraph("No alarm triggered."))
        return section

    def open_channels(self) -> int:
        if self.data.has("active_mask"):
            return int(self.data.active_mask.sum())
        if "curriculum.best_k_active" in self.metrics:
            return int(self.metrics["curriculum.best_k_active"])
        return int(self.model("num_components", 1) or 1)

    def alarms(self) -> list[str]:
        m, alarms = self.metrics, []
        if self.cfg is not None and is_mixture_based(self.cfg) and self.open_channels() >= 2:
            k_eff, active = m.get("mixture.K_eff"), m.get("mixture.active_components")
            if (k_eff is not None and k_eff < 1.5) or (active is not None and active == 1):
                alarms.append(f"mixture collapse: {self.open_channels()} open channels but mixture.K_eff = "
                              f"{fmt(k_eff)} and mixture.active_components = {fmt(active)}")
        if m.get("mixture.dead_components", 0) >= 1:
            alarms.append(f"dead channels: {fmt(m['mixture.dead_components'])} open channel(s) are nobody's argmax"
                          + self.dead_channel_list())
        latent_dim = self.model("latent_dim")
        kl_weight = self.model("kl_weight", 0) or 0
        if m.get("latent.active_units") == 0:
            alarms.append("posterior collapse: latent.active_units = 0")
        elif "loss.kl_z" in m and kl_weight > 0 and latent_dim and m["loss.kl_z"] / kl_weight < 0.01 * latent_dim:
            alarms.append(f"posterior collapse: loss.kl_z / kl_weight = {fmt(m['loss.kl_z'] / kl_weight)} "
                          f"< 0.01 × D = {fmt(0.01 * latent_dim)}")
        if m.get("uncertainty.sigma_saturation", 0) > 0.5:
            alarms.append(f"σ saturation: uncertainty.sigma_saturation = {fmt(m['uncertainty.sigma_saturation'])} "
                          "(> 0.5): most σ values sit at sigma_min or sigma_max")
        overfit = self.overfitting()
        if overfit:
            alarms.append(overfit)
        still = self.still_improving()
        if still:
            alarms.append(still)
        return alarms

    def dead_channel_list(self) -> str:
        if not self.data.has("responsibilities"):
            return ""
        argmax = np.asarray(self.data.diagnostics["responsibilities"]).argmax(axis=1)
        counts = np.bincount(argmax, minlength=self.data.num_components)
        dead = [int(k) for k in self.data.active_channels if counts[k] == 0]
        return f" (channels {', '.join(map(str, dead))})" if dead else ""

    def value_at(self, key: str, epoch: int):
        series = self.data.history(key)
        if series is None:
            return None
        hit = np.flatnonzero(series[0] == epoch)
        return float(series[1][hit[-1]]) if hit.size else None

    def overfitting(self) -> str | None:
        best = self.best_epoch
        if best is None:
            return None
        val, train = self.value_at("val/loss.total", best), self.value_at("train/loss.total", best)
        if val is None or train is None or val - train <= 0.1 * abs(train):
            return None
        return (f"overfitting: at best epoch {best}, val/loss.total ({fmt(val)}) exceeds train/loss.total "
                f"({fmt(train)}) by {fmt(100 * (val - train) / abs(train))} % (> 10 %)")

    def still_improving(self) -> str | None:
        """Training reached max_epochs while the monitor still improved within the last `patience` epochs."""
        if self.cfg is None or self.metrics.get("training.stopped_early", 0) == 1:
            return None
        key, mode = self.monitor()
        series = self.data.history(key)
        max_epochs = int(self.cfg.training.max_epochs)
        if series is None or int(series[0][-1]) < max_epochs:
            return None
        epochs, values = series
        patience = self.cfg.training.patience or max(1, round(0.1 * len(epochs)))
        min_delta = float(self.cfg.training.min_delta or 0.0)
        best, improved = None, []
        for epoch, value in zip(epochs, values):
            if best is None or (value < best - min_delta if mode == "min" else value > best + min_delta):
                best = value
                improved.append(int(epoch))
        if improved and improved[-1] > max_epochs - patience:
            return (f"no early stop: training ended at max_epochs ({max_epochs}) while {key} was still improving "
                    f"(last improvement at epoch {improved[-1]}, within the last {patience} epochs); "
                    "more epochs may help")
        return None

    # ---------------------------------------------------------------------------- loss curves
    def loss_curves(self) -> Section:
        section = Section("Loss curves and stability")
        if not self.record.histories and not self.metrics:
            return section.add(Paragraph(f"Skipped: run has no metric histories (status {self.record.status})."))
        section.add(self.figure("loss_curves"))
        epochs_done = self.metrics.get("training.epochs_completed")
        if epochs_done is None:
            last = [p[0] for points in self.record.histories.values() for p in points]
            epochs_done = max(last) if last else None
        best = self.best_epoch
        key, mode = self.monitor()
        series = self.data.history(key)
        best_text = fmt(best)
        if best is None and series is not None:
            i = int(np.argmin(series[1]) if mode == "min" else np.argmax(series[1]))
            best_text += (f" (the run has no summary; best {key} so far: {fmt(float(series[1][i]))} "
                          f"at epoch {int(series[0][i])})")
        items = [f"best epoch: {best_text}", f"epochs completed: {fmt(epochs_done)}",
                 f"stopped by: {self.stop_reason(epochs_done)}"]
        if series is not None and best is not None and self.value_at(key, best) is not None:
            final, at_best = float(series[1][-1]), self.value_at(key, best)
            items.append(f"monitor {key} ({mode}): final − best = {fmt(final - at_best)} "
                         f"(epoch {int(series[0][-1])}: {fmt(final)}; best epoch {best}: {fmt(at_best)})")
        val = self.data.history("val/loss.total")
        if val is not None:
            epochs, values = val
            rises = [int(epochs[i]) for i in range(1, len(values))
                     if values[i] > values[i - 1] + 0.05 * abs(values[i - 1])]
            text = f"epochs in which val/loss.total rose by more than 5 %: {len(rises)}"
            items.append(text + (f" (epochs {', '.join(map(str, rises))})" if rises else ""))
        return section.add(BulletList(items))

    def stop_reason(self, epochs_done) -> str:
        status, reason = self.record.status, self.tags.get("mixvae.status_reason", "")
        if status == "KILLED":
            return "killed (Ctrl-C or SIGTERM)" + (f": {reason}" if reason else "")
        if status == "FAILED":
            if reason.startswith("non-finite"):
                return f"NaN guard: {reason}"
            return f"failure: {reason}" if reason else "failure"
        if status == "RUNNING":
            return "still running"
        if self.metrics.get("training.stopped_early") == 1:
            patience = self.cfg.training.patience if self.cfg is not None else "?"
            return f"early stopping (patience {patience} on {self.monitor()[0]})"
        if self.cfg is not None and epochs_done is not None and int(epochs_done) >= int(self.cfg.training.max_epochs):
            return f"max_epochs ({self.cfg.training.max_epochs})"
        return "unknown"

    # ------------------------------------------------------------------------ reconstructions
    def reconstructions(self) -> Section:
        section = Section("Reconstructions")
        if self.record.diagnostics is None and "loss.recon" not in self.metrics:
            return section.add(Paragraph(f"Skipped: {self.no_diagnostics}."))
        section.add(self.figure("reconstructions"))
        if "loss.recon" in self.metrics:
            recon = self.metrics["loss.recon"]
            weight = float(self.model("recon_weight", 1.0) or 1.0)
            plain_mse = self.model("reconstruction_loss") == "mse" and not self.model("use_heteroscedastic_decoder")
            unit = "sum of squared errors per image" if plain_mse else "nats per image"
            items = [f"loss.recon (summary): {fmt(recon)}",
                     f"reconstruction NLL per image (loss.recon / recon_weight): {fmt(recon / weight)} {unit}"]
            if self.data.has("recon_error"):
                errors = np.asarray(self.data.diagnostics["recon_error"], dtype=float)
                if errors.size:
                    median, p90 = np.percentile(errors, [50, 90])
                    items.append(f"per-image spread on the split: median {fmt(median)}, 90th percentile {fmt(p90)}, "
                                 f"max {fmt(errors.max())}")
            section.add(BulletList(items))
        return section

    # ------------------------------------------------------------------------------- mixture
    MIXTURE_FIGURES = ("latent_space", "latent_by_component", "channel_latents", "responsibility_histogram",
                       "routing_hardness", "mixture_evolution", "channel_ownership", "component_kl",
                       "component_embedding_divergence", "reconstruction_by_component", "selected_vs_weighted")

    def mixture(self) -> Section:
        section = Section("Mixture routing hardness and specialization")
        if self.cfg is None:
            return section.add(Paragraph("Skipped: run has no config.yaml."))
        keys = self.keys_with_prefix("mixture.", "clustering.", "latent.active_units")
        if not is_mixture_based(self.cfg):
            section.add(Paragraph(f"Not applicable: prior_type is '{self.cfg.model.prior_type}'."))
            if keys:
                section.add(self.metric_table(keys))
            return section.add(self.figure("latent_space"))
        if self.record.diagnostics is None and not keys:
            return section.add(Paragraph(f"Skipped: {self.no_diagnostics}."))
        if keys:
            section.add(self.metric_table(keys))
        channel_rows = self.channel_rows()
        if channel_rows:
            section.add(Paragraph("Per channel (usage p̄_k on the summary split, π_k at the best epoch):"),
                        Table(["channel", "usage p̄_k", "π_k", "majority label", "share", "state"], channel_rows))
        return section.add(*[self.figure(name) for name in self.MIXTURE_FIGURES])

    def channel_rows(self) -> list[list[str]]:
        per = (self.summary or {}).get("per_component") or {}
        usage = per.get("usage") or []
        pi = per.get("pi") or (list(np.asarray(self.data.diagnostics["pi"])) if self.data.has("pi") else [])
        if not usage and not pi:
            return []
        count = max(len(usage), len(pi))
        majority, share = per.get("majority_label") or [], per.get("majority_share") or []
        if self.data.has("active_mask"):
            mask = self.data.active_mask
        else:
            mask = np.asarray(per.get("active") or [True] * count, dtype=bool)

        def at(values, k):
            return values[k] if k < len(values) else None

        rows = []
        for k in range(count):
            label = at(majority, k)
            rows.append([str(k), fmt(at(usage, k)), fmt(at(pi, k)),
                         "—" if label is None or label == -1 else str(label), fmt(at(share, k)),
                         "active" if k >= len(mask) or mask[k] else "closed"])
        return rows

    # ----------------------------------------------------------------------------------- τ
    def tau(self) -> Section:
        section = Section("τ classifier")
        if self.cfg is None:
            return section.add(Paragraph("Skipped: run has no config.yaml."))
        if not self.cfg.model.use_tau_classifier:
            return section.add(Paragraph("Not applicable: model.use_tau_classifier is false."))
        keys = self.keys_with_prefix("tau.")
        if self.record.diagnostics is None and not keys:
            return section.add(Paragraph(f"Skipped: {self.no_diagnostics}."))
        if keys:
            section.add(self.metric_table(keys))
        return section.add(*[self.figure(n) for n in ("tau_matrix", "tau_per_class_accuracy",
                                                       "tau_certainty_calibration")])

    # ---------------------------------------------------------------------------- curriculum
    def curriculum(self) -> Section:
        section = Section("Channel curriculum")
        if self.cfg is None:
            return section.add(Paragraph("Skipped: run has no config.yaml."))
        if not self.cfg.curriculum.enabled:
            return section.add(Paragraph("Not applicable: curriculum.enabled is false."))
        events = self.data.events
        keys = self.keys_with_prefix("curriculum.")
        if not events and not keys and self.statuses.get("curriculum_k_active", PlotStatus("")).status != "success":
            return section.add(Paragraph(f"Skipped: run has no curriculum events, summary or history "
                                         f"(status {self.record.status})."))
        if events:
            section.add(Table(["epoch", "event", "channel", "k_active", "monitor value", "reason"],
                              [[fmt(e.get("epoch")), str(e.get("event")), fmt(e.get("channel")),
                                fmt(e.get("k_active")), fmt(e.get("monitor_value")), fmt(e.get("reason"))]
                               for e in events]))
        else:
            section.add(Paragraph("No curriculum events were recorded."))
        stop = ((self.summary or {}).get("curriculum") or {}).get("stop_reason")
        if stop:
            section.add(Paragraph(f"Stop reason: {stop}."))
        if keys:
            section.add(self.metric_table(keys))
        return section.add(self.figure("curriculum_k_active"))

    # --------------------------------------------------------------------------- uncertainty
    def uncertainty(self) -> Section:
        section = Section("Uncertainty")
        if self.cfg is None:
            return section.add(Paragraph("Skipped: run has no config.yaml."))
        if not self.cfg.model.use_heteroscedastic_decoder:
            return section.add(Paragraph("Not applicable: model.use_heteroscedastic_decoder is false."))
        keys = self.keys_with_prefix("uncertainty.")
        if self.record.diagnostics is None and not keys:
            return section.add(Paragraph(f"Skipped: {self.no_diagnostics}."))
        if keys:
            section.add(self.metric_table(keys))
        return section.add(self.figure("sigma_histogram"))

    # --------------------------------------------------------------------------- plot status
    def plot_status(self) -> Section:
        rows = []
        for spec in CATALOGUE:
            status = self.statuses.get(spec.name) or PlotStatus("skipped", "not run")
            rows.append([spec.name, f"`{spec.file}`", status.status, status.reason or ""])
        return Section("Plot status", [Table(["plot", "file", "status", "reason"], rows)])

    # ----------------------------------------------------------------------------- artifacts
    def artifacts(self) -> Section:
        section = Section("Artifacts")
        artifacts = sorted(self.record.artifacts or [])
        if artifacts:
            section.add(Table(["path", "size"], [[f"`{p}`", fmt_bytes(int(s or 0))] for p, s in artifacts]))
        else:
            section.add(Paragraph("The run has no artifacts."))
        uri = self.record.model_uri
        section.add(Paragraph(f"Logged model: `{uri}`" if uri else "Logged model: none."))
        registered = self.tags.get("mixvae.registered_model")
        match = re.fullmatch(r"(.+)/(\d+)@(.+)", registered or "")
        if match:
            name, version, alias = match.groups()
            section.add(Paragraph(f"Registered model: `{name}` version {version}, alias `{alias}` "
                                  f"(`models:/{name}@{alias}`)."))
        elif registered:
            section.add(Paragraph(f"Registered model: `{registered}`."))
        else:
            section.add(Paragraph("Registered model: not registered."))
        return section

    # ---------------------------------------------------------------------------------- all
    def document(self, generated: datetime) -> Document:
        self.generated = generated.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        builders = [self.configuration, self.results, self.loss_curves, self.reconstructions, self.mixture,
                    self.tau, self.curriculum, self.uncertainty, self.plot_status, self.artifacts]
        titles = ["Configuration", "Results", "Loss curves and stability", "Reconstructions",
                  "Mixture routing hardness and specialization", "τ classifier", "Channel curriculum",
                  "Uncertainty", "Plot status", "Artifacts"]
        sections = []
        for build, title in zip(builders, titles):
            try:
                sections.append(build())
            except Exception as exc:  # one broken section must not cost the whole report
                log.warning("report section %r failed: %s", title, exc, exc_info=True)
                sections.append(Section(title, [Paragraph(
                    f"Skipped: this section could not be built ({type(exc).__name__}: {exc}).")]))
        return Document(f"mixvae report: {self.record.run_name}", self.header(), sections)


def report_document(record, statuses: dict[str, PlotStatus], generated: datetime) -> Document:
    """The report of one run as a Document (its sections in order)."""
    return _Report(record, statuses).document(generated)
