"""The sections of REPORT.md, one method each, built from one RunRecord and its plot statuses.

Every section is always present: one that does not apply holds `Not applicable: <reason>.`, one
whose inputs are missing `Skipped: <reason>.` The diagnosis behind the alarms lives in health.py,
the comparison with schema defaults in config_diff.py.
"""

from __future__ import annotations

import re

import numpy as np

from . import health
from .config_diff import config_differences
from .document import BulletList, Image, Paragraph, Section, Table
from .formatting import (GENERATED_PREFIX, acc_method_of, clip, family_of, fmt, fmt_bytes, fmt_duration,
                         fmt_utc, metric_label, ordered_metric_keys)
from .plots import CATALOGUE, PLOT_FILES, PlotData, PlotStatus
from .plots.common import is_mixture_based

MIXTURE_FIGURES = ("latent_space", "latent_by_component", "component_latents", "responsibility_histogram",
                   "routing_hardness", "mixture_evolution", "component_ownership", "component_kl",
                   "component_embedding_divergence", "reconstruction_by_component", "selected_vs_weighted")


class ReportSections:
    """Builds the report's header and sections from one record and its plot statuses."""

    def __init__(self, record, statuses: dict[str, PlotStatus], generated: str):
        self.record = record
        self.statuses = statuses
        self.generated = generated
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
        best = self.data.best_epoch
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
        rows = config_differences(self.record.config, self.tags.get("mixvae.config_name"), self.cfg)
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
        alarms = health.alarms(self.data)
        section.add(Paragraph("**Alarms**"))
        section.add(BulletList(alarms) if alarms else Paragraph("No alarm triggered."))
        return section

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
        items = [f"best epoch: {self.best_epoch_text()}", f"epochs completed: {fmt(epochs_done)}",
                 f"stopped by: {self.stop_reason(epochs_done)}"]
        key, mode = health.monitor_of(self.data)
        series, best = self.data.history(key), self.data.best_epoch
        if series is not None and best is not None and self.data.value_at(key, best) is not None:
            final, at_best = float(series[1][-1]), self.data.value_at(key, best)
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

    def best_epoch_text(self) -> str:
        """The best epoch; without a summary, the best monitored value logged so far."""
        best = self.data.best_epoch
        key, mode = health.monitor_of(self.data)
        series = self.data.history(key)
        text = fmt(best)
        if best is None and series is not None:
            i = int(np.argmin(series[1]) if mode == "min" else np.argmax(series[1]))
            text += (f" (the run has no summary; best {key} so far: {fmt(float(series[1][i]))} "
                     f"at epoch {int(series[0][i])})")
        return text

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
            return f"early stopping (patience {patience} on {health.monitor_of(self.data)[0]})"
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
            weight = float(self.data.model_setting("recon_weight", 1.0) or 1.0)
            plain_mse = (self.data.model_setting("reconstruction_loss") == "mse"
                         and not self.data.model_setting("use_heteroscedastic_decoder"))
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
        component_rows = self.component_rows()
        if component_rows:
            section.add(Paragraph("Per component (usage p̄_k on the summary split, π_k at the best epoch):"),
                        Table(["component", "usage p̄_k", "π_k", "majority label", "share", "state"],
                              component_rows))
        return section.add(*[self.figure(name) for name in MIXTURE_FIGURES])

    def component_rows(self) -> list[list[str]]:
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
        section = Section("Component curriculum")
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
            # runs logged before the field was named "component" call it "channel"
            section.add(Table(["epoch", "event", "component", "k_active", "monitor value", "reason"],
                              [[fmt(e.get("epoch")), str(e.get("event")), fmt(e.get("component", e.get("channel"))),
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
