"""What every `mixvae` command shares: exit codes, the per-invocation state, stdout lines and failing
with a message and an exit code."""

from __future__ import annotations

import sys

import click

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class State:
    def __init__(self, tracking_uri, verbose, quiet):
        from mixvae.console import Console
        self.tracking_uri = tracking_uri
        self.verbose = verbose
        self.quiet = quiet
        self.console = Console(quiet=quiet, verbose=verbose)


def _out(line: str) -> None:
    click.echo(line)


def _fail(state: State, message: str, code: int) -> None:
    state.console.error(message)
    sys.exit(code)
