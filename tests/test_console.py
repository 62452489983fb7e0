"""Console output: a progress bar on terminals (drawn by rich), one plain line per epoch elsewhere."""

from __future__ import annotations

import io
import re
import time

from mixvae.console import Console


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _visible(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_a_terminal_gets_a_bar_and_no_epoch_lines():
    stream = _Terminal()
    console = Console(stream=stream)
    started = time.perf_counter()
    for done in (1, 2):
        console.bar(done, 4, started, "epoch", "val loss 12.5")
        console.epoch_line(f"epoch {done}")
    console.end_bar()
    shown = _visible(stream.getvalue())
    assert "epoch 2/4" in shown and "50%" in shown and "val loss 12.5" in shown
    assert "epoch 1\n" not in shown
    assert console.lines == ["epoch 1", "epoch 2"]  # the log keeps them


def test_elsewhere_one_line_per_epoch_and_no_bar():
    stream = io.StringIO()
    console = Console(stream=stream)
    console.bar(1, 4, time.perf_counter(), "epoch")
    console.epoch_line("epoch 1 loss 3.0")
    assert stream.getvalue() == "epoch 1 loss 3.0\n"


def test_quiet_draws_nothing_but_errors():
    stream = _Terminal()
    console = Console(quiet=True, stream=stream)
    console.bar(1, 2, time.perf_counter(), "epoch")
    console.print("hidden")
    console.error("shown")
    assert _visible(stream.getvalue()) == "shown\n"
