"""Human-readable output on stderr: headers, a progress bar on terminals, one
plain line per epoch elsewhere, and a copy of every line for the run's ``logs/train.log``; with -v, the
table of where a run's wall time went."""

from __future__ import annotations

import json
import sys
import time


def _new_progress(stream):
    """A transient one-line rich progress bar on `stream`: label, done/total, bar, %, elapsed<ETA, suffix."""
    from rich.console import Console as RichConsole
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), MofNCompleteColumn(), BarColumn(bar_width=26),
                    TaskProgressColumn(), TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
                    TextColumn("{task.fields[suffix]}"),
                    console=RichConsole(file=stream, force_terminal=True), transient=True, auto_refresh=False)


class Console:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lines: list[str] = []       # what goes to logs/train.log
        self._progress = None  # a rich Progress while a bar is drawn
        self._task = None
        self._task_label: str | None = None

    # --- plain lines -----------------------------------------------------------------------------

    def print(self, text: str = "", *, force: bool = False) -> None:
        self.lines.append(text)
        if self.quiet and not force:
            return
        self._clear_bar()
        print(text, file=self.stream, flush=True)

    def error(self, text: str) -> None:
        self.lines.append(text)
        self._clear_bar()
        print(text, file=self.stream, flush=True)

    def debug(self, text: str) -> None:
        if self.verbose:
            self.print(text)

    # --- progress -----------------------------------------------------------------------------------

    def bar(self, done: int, total: int, started: float, label: str, suffix: str = "") -> None:
        """Redraw one progress bar in place (terminals only), drawn by rich; `started` is kept for the
        callers' interface, rich measures elapsed time and the ETA itself."""
        if self.quiet or not self.tty:
            return
        if self._progress is None or self._task_label != label:
            self._clear_bar()
            self._progress = _new_progress(self.stream)
            self._task = self._progress.add_task(label, total=total, suffix="")
            self._task_label = label
            self._progress.start()
        self._progress.update(self._task, completed=done, total=total, suffix=suffix)
        self._progress.refresh()

    def epoch_line(self, text: str) -> None:
        """The plain per-epoch line, printed only where no bar is drawn; always kept for the log."""
        self.lines.append(text)
        if self.quiet or self.tty:
            return
        print(text, file=self.stream, flush=True)

    def end_bar(self) -> None:
        self._clear_bar()

    def _clear_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._task_label = None

    def log_text(self) -> str:
        return "\n".join(self.lines) + "\n"


PHASE_NAMES = {"startup": "start-up: interpreter, imports, config checks", "data": "data",
               "build": "build the model, optimiser and trainer",
               "store": "open the MLflow run (building and compiling meanwhile)",
               "compile": "compile (or the wait for the background build and compilation)",
               "epochs": "epochs", "final_evaluation": "final evaluation", "model": "model logging",
               "report": "report"}


def phase_table(phases: dict[str, float], total: float) -> list[str]:
    """Where the wall time of a run went, one line per phase: the named phases in order, then what
    no phase covers (parameters, tags, closing the run), then the process's total."""
    rows = [(PHASE_NAMES.get(name, name), seconds) for name, seconds in phases.items()]
    rows.append(("the rest: params, tags, checkpoints upload, closing the run", total - sum(phases.values())))
    width = max(len(name) for name, _ in rows)
    lines = [f"{'phase':<{width}}  seconds  share"]
    lines += [f"{name:<{width}}  {seconds:7.2f}  {100 * seconds / max(total, 1e-9):4.0f} %" for name, seconds in rows]
    lines.append(f"{'total':<{width}}  {total:7.2f}")
    return lines


_STARTED = []  # set by the first training of the process: later ones (a sweep's trials) have no start-up


def startup_seconds() -> float:
    """Seconds from the process's start to its first training (interpreter, imports, config checks)."""
    if _STARTED:
        return 0.0
    _STARTED.append(True)
    try:
        import psutil
        return max(time.time() - psutil.Process().create_time(), 0.0)
    except Exception:  # pragma: no cover - no process start time: the table starts at train()
        return 0.0


def print_phases(console: Console, phases: dict, t_start: float) -> None:
    """With -v: the phases as one JSON line (bench/ reads it) and as a table for people."""
    console.debug("phases " + json.dumps({k: round(v, 3) for k, v in phases.items()}))
    for line in phase_table(phases, phases.get("startup", 0.0) + time.perf_counter() - t_start):
        console.debug("  " + line)
