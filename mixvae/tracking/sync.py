"""`mixvae sync RUN_ID`: deliver what a run's spool kept on local disk while the tracking store did not
answer (an outage that outlasted training, or a process that died), in order, then end the run with
the status the spool recorded. `mixvae train --resume` does the same first, so that a resumed run
starts from everything the earlier process logged.

The store is the one given by `--tracking-uri` / `MLFLOW_TRACKING_URI`, else the one the spool
recorded (without a password: a store that needs one takes it from the environment).

The click command lives here and cli.py registers it (cli.py is at its size limit); this module
imports mlflow only when a spool is delivered, so `mixvae validate` stays fast.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import click

from mixvae import paths
from mixvae.tracking.spool import Spool, runs_with_spools, spool_dir, without_password
from mixvae.tracking.writer import RunNotFound, TrackingError
from mixvae.tracking_uri import resolve_tracking_uri

EXIT_RUNTIME, EXIT_USAGE = 1, 2


@dataclass
class SyncResult:
    run_id: str
    uri: str
    kept: str               # what the spool held, in words
    status: str | None      # the status the run now has in the store
    left: str | None        # what is still undelivered (the store went away again), else None
    not_made: list[str]     # what training's end could not make without the store: "report", "model"


def spooled_run(run_ref: str) -> str | None:
    """The id of the one run starting with `run_ref` whose spool holds calls; None when there is none.
    RunNotFound when several match."""
    matches = runs_with_spools(run_ref)
    if len(matches) > 1:
        raise RunNotFound(f"{run_ref} matches the spools of {len(matches)} runs: {', '.join(matches)}; "
                          "give more of the run id")
    return matches[0] if matches else None


def sync_run(run_id: str, cli_uri: str | None) -> SyncResult:
    """Deliver the spool of `run_id` (a full id with a spool, see `spooled_run`). TrackingError when
    the store cannot be reached or another process is writing the run; RunNotFound when the store
    does not know the run."""
    from mixvae.tracking.connection import connect
    from mixvae.tracking.mlflow_writer import MlflowWriter

    spool = Spool(spool_dir(run_id))
    kept = spool.summary()
    uri = resolve_tracking_uri(cli_uri, spool.meta().get("uri") or None)[0]
    client = connect(uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise RunNotFound(f"the tracking store at {without_password(uri)} has no run {run_id}; name the store "
                          "that has it with --tracking-uri or MLFLOW_TRACKING_URI") from exc
    writer = MlflowWriter(client, run_id=run_id, run_name=run.info.run_name, uri=uri, attached=True,
                          spool=spool.directory, outage_tolerance=0)
    try:
        delivered = writer.flush()
    finally:
        writer.close(timeout=0)
    if writer.error:
        raise TrackingError(f"tracking failure: {writer.error}")
    if not delivered:
        return SyncResult(run_id, uri, kept, None, Spool(spool_dir(run_id)).summary(), [])
    run = client.get_run(run_id)
    not_made = []
    if run.data.tags.get("mixvae.kind") == "train" and run.info.status == "FINISHED":
        not_made = [what for what in ("report", "model") if f"mixvae.{what}_status" not in run.data.tags]
    return SyncResult(run_id, uri, kept, run.info.status, None, not_made)


def sync_kept(run_ref: str, cli_uri: str | None, console, command: bool = False) -> SyncResult | None:
    """Deliver the kept spool of the run starting with `run_ref` and say so on `console` (for the `sync`
    command also when there is none, and what to do next). → the SyncResult, or None when no such run
    has a kept spool. TrackingError when the store cannot take it (naming what stays kept); RunNotFound."""
    run_id = spooled_run(run_ref)
    if run_id is None:
        if command:
            console.print(f"nothing to deliver: no run starting with {run_ref} has undelivered calls in "
                          f"{paths.shown(paths.checkpoints_dir(run_ref).parent)}")
        return None
    try:
        result = sync_run(run_id, cli_uri)
    except TrackingError as exc:
        raise TrackingError(f"{exc}; nothing is lost, the calls stay kept: try again with "
                            f"mixvae sync {run_id}") from exc
    where = without_password(result.uri)
    if result.left is not None:
        raise TrackingError(f"the tracking store at {where} stopped answering during the sync; still kept: "
                            f"{result.left}; try again with: mixvae sync {run_id}")
    console.print(f"delivered   {result.kept} to run {run_id} at {where}; the run is {result.status}")
    if not command:  # --resume goes on from here
        return result
    if result.status == "RUNNING":
        console.print(f"            its process ended without a status: continue it with "
                      f"mixvae train --resume {run_id}")
    if "report" in result.not_made:
        console.print(f"            no report yet: build it with mixvae report {run_id}")
    if "model" in result.not_made:
        console.print("            the model was not logged (its weights are the run's checkpoints/best)")
    return result


def sync_spool(state, run_ref: str, command: bool = False) -> SyncResult | None:
    """`sync_kept` for the CLI's `state` (its console and --tracking-uri): exits 1 when the store cannot
    take the spool (it stays kept), 2 for an unknown or ambiguous run. Also the first step of `--resume`."""
    try:
        return sync_kept(run_ref, state.tracking_uri, state.console, command)
    except (RunNotFound, TrackingError) as exc:
        state.console.error(str(exc))
        sys.exit(EXIT_USAGE if isinstance(exc, RunNotFound) else EXIT_RUNTIME)


@click.command("sync")
@click.argument("run_id")
@click.pass_obj
def sync_command(state, run_id):
    """Deliver what RUN_ID kept on local disk while the tracking store was away, and end the run."""
    result = sync_spool(state, run_id, command=True)
    if result is not None:
        click.echo(f"run_id={result.run_id}")
        click.echo(f"status={result.status}")
