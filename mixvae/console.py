"""Human-readable output on stderr: headers, a progress bar on terminals, one
plain line per epoch elsewhere, and a copy of every line for the run's ``logs/train.log``."""

from __future__ import annotations

import shutil
import sys
import time


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Console:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.verbose = verbose
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.lines: list[str] = []       # what goes to logs/train.log
        self._bar_shown = False

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
        """Redraw one progress bar in place (terminals only)."""
        if self.quiet or not self.tty:
            return
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (total - done) if done else 0.0
        width = 26
        filled = int(width * done / max(total, 1))
        pct = int(100 * done / max(total, 1))
        text = (f"{label} {done}/{total} {'█' * filled}{'░' * (width - filled)} {pct:3d}% "
                f"{_fmt_time(elapsed)}<{_fmt_time(eta)}  {suffix}")
        cols = shutil.get_terminal_size((120, 20)).columns
        self.stream.write("\r" + text[: cols - 1].ljust(cols - 1))
        self.stream.flush()
        self._bar_shown = True

    def epoch_line(self, text: str) -> None:
        """The plain per-epoch line, printed only where no bar is drawn; always kept for the log."""
        self.lines.append(text)
        if self.quiet or self.tty:
            return
        print(text, file=self.stream, flush=True)

    def end_bar(self) -> None:
        self._clear_bar()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            cols = shutil.get_terminal_size((120, 20)).columns
            self.stream.write("\r" + " " * (cols - 1) + "\r")
            self.stream.flush()
            self._bar_shown = False

    def log_text(self) -> str:
        return "\n".join(self.lines) + "\n"
