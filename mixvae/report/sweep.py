"""REPORT.md and REPORT.html of a sweep, built from a `SweepRecord` (the parent run and its trial runs as
MLflow holds them), by `mixvae report PARENT_ID` and at the end of `mixvae sweep` alike.

The report: a header (study, metric, direction, trials requested and done by state, storage, pruner, wall
time), the best trial (value, params, run, the best config and the command that trains it again), the
figures (optimisation history, parameter importances, parallel coordinates, slice plot; a figure that
cannot say anything holds the reason instead), the search space and the table of every trial.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from .document import BulletList, Document, Image, Paragraph, Section, Table
from .formatting import GENERATED_PREFIX, clip, fmt, fmt_duration, fmt_utc
from .plots import PlotStatus
from .sweep_plots import FIGURES, sweep_plots

log = logging.getLogger(__name__)

BEST_CONFIG = "sweep/best_config.yaml"


def build_sweep_report(record, out_dir: Path, html: bool = True) -> Path:
    """Draw the sweep's figures and write REPORT.md (and REPORT.html) into ``out_dir`` → REPORT.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    statuses, notes = sweep_plots(record, out_dir / "figures")
    document = sweep_document(record, statuses, notes, datetime.now(timezone.utc),
                              local_best_config=(out_dir / "best_config.yaml").is_file())
    report_md = out_dir / "REPORT.md"
    report_md.write_text(document.to_markdown(), encoding="utf-8")
    if html:
        (out_dir / "REPORT.html").write_text(document.to_html(out_dir), encoding="utf-8")
    return report_md


def sweep_document(record, statuses: dict[str, PlotStatus], notes: list[str], generated: datetime, *,
                   local_best_config: bool = False) -> Document:
    """The sweep report as a Document. A section that fails to build holds the reason instead."""
    builder = _Sections(record, statuses, notes, local_best_config)
    stamp = generated.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    sections = []
    for title, method in (("Best trial", builder.best_trial), ("Figures", builder.figures),
                          ("Search space", builder.space), ("Trials", builder.trials)):
        try:
            sections.append(method())
        except Exception as exc:  # one broken section must not cost the whole report
            log.warning("sweep report section %r failed: %s", title, exc, exc_info=True)
            sections.append(Section(title, [Paragraph(
                f"Skipped: this section could not be built ({type(exc).__name__}: {exc}).")]))
    title = f"mixvae sweep report: {record.tag('study') or record.run_name}"
    return Document(title, builder.header() + [Paragraph(f"{GENERATED_PREFIX}{stamp}")], sections)


def param_value(params: dict, key: str) -> str:
    """A swept value as a cell: a null choice is `null`, a key the run did not log is an em dash."""
    if key not in params:
        return "—"
    return "null" if params[key] is None else fmt(params[key])


def short_names(keys) -> dict[str, str]:
    """Column names: a key's last part where that is unique among the swept keys, else the whole key."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


class _Sections:
    def __init__(self, record, statuses, notes, local_best_config: bool):
        self.r = record
        self.statuses = statuses
        self.notes = notes
        self.local_best_config = local_best_config
        self.best = record.best()
        self.keys = list(record.space) or sorted({k for t in record.trials for k in t.params})

    # ---------------------------------------------------------------------------------- header
    def header(self) -> list:
        r = self.r
        status = r.status
        if status != "FINISHED" and r.tags.get("mixvae.status_reason"):
            status += f" — {r.tags['mixvae.status_reason']}"
        direction = r.direction
        rows = [
            ["study", r.tag("study") or "—"],
            ["metric", f"`{r.metric or '—'}` ({direction})"],
            ["trials", self.trials_line()],
            ["by state", self.counts_line()],
            ["pruner", r.tag("pruner") or "—"],
            ["storage", r.tag("storage") or "—"],
            ["parent run", f"`{r.run_id}` ({r.run_name}) · {status}"],
            ["experiment", r.experiment_name],
            ["config", r.tags.get("mixvae.config_name", "—")],
            ["mixvae version", r.tags.get("mixvae.version", "—")],
            ["started", fmt_utc(r.start_time)],
            ["wall time", self.wall_time()],
        ]
        blocks = [Table(["field", "value"], rows)]
        if mismatch := self.count_mismatch():
            blocks.append(Paragraph(mismatch))
        return blocks

    def trials_line(self) -> str:
        done = sum(self.r.count(s) for s in ("COMPLETE", "PRUNED", "FAIL"))
        requested = self.r.requested
        asked = "—" if requested is None else str(requested)
        return f"{asked} requested · {done} done · {len(self.r.trials)} with a run"

    def counts_line(self) -> str:
        return " · ".join(f"{self.r.count(s)} {name}" for s, name in
                          (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed"),
                           ("RUNNING", "running")))

    def wall_time(self) -> str:
        r = self.r
        if r.end_time is not None and r.status != "RUNNING":
            return fmt_duration(r.start_time, r.end_time)
        ends = [t.end_time or t.start_time for t in r.trials if (t.end_time or t.start_time)]
        if not ends:
            return "— (still running)"
        return f"{fmt_duration(r.start_time, max(ends))} so far (still running)"

    def count_mismatch(self) -> str | None:
        """The parent counts trials Optuna was told about; a trial that failed before its run existed has
        no run, so the trial runs can count fewer."""
        out = []
        for state, name in (("COMPLETE", "complete"), ("PRUNED", "pruned"), ("FAIL", "failed")):
            parent = self.r.metrics.get(f"sweep.n_{name}")
            if parent is not None and int(parent) != self.r.count(state):
                out.append(f"{int(parent)} {name} (the trial runs show {self.r.count(state)})")
        if not out:
            return None
        return ("The parent run counts " + ", ".join(out) + ". A trial that failed before its run started "
                "(sampled values that make the config invalid, an interrupt) has no run; a worker still "
                "training or killed hard leaves its trial unfinished.")

    # ------------------------------------------------------------------------------- best trial
    def best_trial(self) -> Section:
        section = Section("Best trial")
        best, r = self.best, self.r
        if best is None:
            return section.add(Paragraph("No trial has completed, so there is no best trial yet."))
        section.add(Paragraph(f"Trial **{best.number}**: `{r.metric}` = **{fmt(best.value)}** "
                              f"({r.direction}), run `{best.run_id}` ({best.run_name})."))
        section.add(Table(["key", "value"], [[f"`{k}`", param_value(best.params, k)] for k in self.keys]))
        tagged = r.tag("best_trial")
        if tagged is not None and tagged != str(best.number):
            section.add(Paragraph(f"The parent's tag `mixvae.sweep.best_trial` names trial {tagged}; the trial "
                                  "runs as logged make trial " f"{best.number} the best."))
        section.add(self.best_config_text())
        return section

    def best_config_text(self) -> Paragraph:
        r = self.r
        if not r.has_artifact(BEST_CONFIG):
            return Paragraph(f"The parent run has no `{BEST_CONFIG}`, so there is no ready-made config to train.")
        where = "beside this report, and " if self.local_best_config else ""
        return Paragraph(
            f"Its resolved config is `{BEST_CONFIG}` of the parent run ({where}downloadable with "
            f"`mlflow artifacts download --run-id {r.run_id} --artifact-path {BEST_CONFIG} --dst-path .`). "
            "Train it again with `mixvae train -c best_config.yaml`; confirm it over seeds with "
            "`mixvae train -c best_config.yaml --seeds 0-4` before adopting it.")

    # ---------------------------------------------------------------------------------- figures
    def figures(self) -> Section:
        section = Section("Figures")
        for name, file, title in FIGURES:
            status = self.statuses.get(name)
            sub = Section(title)
            if status is not None and status.status == "success":
                sub.add(Image(f"figures/{file}", title))
            elif status is None:
                sub.add(Paragraph("Not drawn."))
            else:
                sub.add(Paragraph(f"Not drawn ({status.status}): {status.reason}."))
            section.add(sub)
        if self.notes:
            section.add(BulletList(self.notes))
        return section

    # ------------------------------------------------------------------------------------ space
    def space(self) -> Section:
        section = Section("Search space")
        if not self.r.space:
            return section.add(Paragraph(f"Skipped: {self.r.space_problem or 'the space is empty'}."))
        rows = []
        for key, dim in self.r.space.items():
            if dim.type == "categorical":
                what = ", ".join("null" if c is None else fmt(c) for c in dim.choices or [])
                rows.append([f"`{key}`", "categorical", what])
            else:
                extra = (" · log" if dim.log else "") + (f" · step {fmt(dim.step)}" if dim.step not in (None, 1)
                                                         else "")
                rows.append([f"`{key}`", dim.type, f"{fmt(dim.low)} … {fmt(dim.high)}{extra}"])
        return section.add(Table(["key", "type", "range"], rows))

    # ----------------------------------------------------------------------------------- trials
    def trials(self) -> Section:
        section = Section("Trials")
        if not self.r.trials:
            return section.add(Paragraph("No trial run is nested under the parent run yet."))
        names = short_names(self.keys)
        headers = ["trial", "state", "value", *names.values(), "epochs", "run", "duration", "note"]
        rows = []
        for t in self.r.trials:
            value = fmt(t.value)
            if self.best is not None and t.run_id == self.best.run_id:
                value = f"**{value}** (best)"
            duration = "running" if t.status == "RUNNING" else fmt_duration(t.start_time, t.end_time)
            notes = [t.reason] if t.reason else []
            notes += [f"{k}={v} fits no value of the space" for k, v in t.unparsed.items()]
            rows.append([str(t.number), t.state, value, *(param_value(t.params, k) for k in self.keys),
                         fmt(t.epochs), f"`{t.run_id[:8]}`", duration, clip("; ".join(notes), 160)])
        section.add(Paragraph(f"{len(rows)} trial runs, by trial number; the value is the trial's best "
                              f"`{self.r.metric}` over the epochs it trained."), Table(headers, rows))
        return section
