"""`mixvae train --resume RUN_ID`: the same run continued from its last checkpoint, with its own config
and only resume-safe overrides; a RUNNING run is taken over only when its process is provably gone."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from mixvae.cli.common import EXIT_RUNTIME, EXIT_USAGE, State, _fail, _out
from mixvae.tracking.sync import sync_spool as _sync_spool

RESUME_SAFE = ("training.max_epochs", "training.patience", "training.checkpoint_every", "training.devices",
               "training.decode_chunks")


def resume(state: State, run_ref: str, config: str | None, items: list[str], shortcuts: dict, force: bool) -> None:
    """--resume RUN_ID: same run, same config, only resume-safe overrides."""
    from mixvae import run as runner
    from mixvae.config import ConfigError, flat_values, load_config, parse_overrides
    from mixvae.tracking_uri import resolve_tracking_uri

    console = state.console
    try:
        parsed = parse_overrides(items)
    except ConfigError as exc:
        _fail(state, exc.render(), EXIT_USAGE)
    bad = [key for key, _, _ in parsed if key not in RESUME_SAFE and not key.startswith("tracking.")]
    if bad:
        _fail(state, f"--resume: {', '.join(bad)} cannot change when resuming; only "
                     f"{', '.join(RESUME_SAFE)} and tracking.* may be overridden", EXIT_USAGE)
    uri = resolve_tracking_uri(state.tracking_uri, None)[0]
    info = _resume_info(state, run_ref, uri)
    if info.status == "RUNNING" and not force:
        _take_over(state, info)
    if _sync_spool(state, info.run_id) is not None:  # what its process kept on disk goes to the run first
        info = _resume_info(state, info.run_id, uri)
    if info.checkpoint_dir is None:
        _fail(state, f"run {info.run_id} has no checkpoints/last artifact; it cannot be resumed", EXIT_USAGE)
    if info.config is None:
        _fail(state, f"run {info.run_id} has no config.yaml artifact; it cannot be resumed", EXIT_USAGE)
    import yaml
    raw = yaml.safe_load(info.config)
    try:
        loaded = load_config(info.config_name or "config", items, shortcuts, tracking_uri=state.tracking_uri, raw=raw)
    except ConfigError as exc:
        _fail(state, exc.render(), EXIT_USAGE)
    if config:
        try:
            given = load_config(config, tracking_uri=state.tracking_uri)
        except ConfigError as exc:
            _fail(state, exc.render(), EXIT_USAGE)
        a, b = flat_values(given.config), flat_values(loaded.config)
        diff = [k for k in a if a[k] != b.get(k) and k not in RESUME_SAFE and not k.startswith(("tracking.", "experiment."))]
        if diff:
            _fail(state, f"--resume: the config differs from run {info.run_id}'s config in {', '.join(diff)}; "
                         "only resume-safe keys may change", EXIT_USAGE)
    loaded.input_text = info.config
    try:
        outcome = runner.train(loaded, console, cli_uri=state.tracking_uri, resume_run_id=info.run_id,
                               resume_dir=info.checkpoint_dir, resume_overrides=[i for _, _, i in parsed],
                               verbose=state.verbose, resume_logged=info.logged_epochs)
    except runner.UsageError as exc:
        _fail(state, str(exc), EXIT_USAGE)
    for line in outcome.stdout:
        _out(line)
    sys.exit(outcome.exit_code)


def _resume_info(state: State, run_ref: str, uri: str):
    """The run to resume with its config and last checkpoint downloaded; exits 2 for an unknown run,
    1 when the store fails."""
    from mixvae.tracking.entry_points import prepare_resume
    from mixvae.tracking.writer import RunNotFound, TrackingError
    try:
        return prepare_resume(run_ref, uri, Path(tempfile.mkdtemp(prefix="mixvae-resume-")))
    except RunNotFound as exc:
        _fail(state, str(exc), EXIT_USAGE)
    except TrackingError as exc:
        _fail(state, str(exc), EXIT_RUNTIME)


def _take_over(state: State, info) -> None:
    """--resume of a RUNNING run without --force: only when the process that trained it is provably gone."""
    from mixvae.tracking.ownership import may_take_over
    allowed, why = may_take_over(info.run_id, info.tags)
    if not allowed:
        _fail(state, why, EXIT_USAGE)
    state.console.print(why)
