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


def refuse_in_job(state: State, what: str) -> None:
    """Exit 2 before anything is opened when the environment puts this process in a job of several: ``what``
    (--seeds, a sweep) trains run after run in a single process."""
    from mixvae.processes import ENV_COUNT, JobError, from_env
    try:
        in_job = from_env() is not None
    except JobError:
        in_job = True
    if in_job:
        _fail(state, f"{what} trains in a single process; unset {ENV_COUNT} for it", EXIT_USAGE)
