"""What `mixvae train` needs before its first epoch that can be known without training: a tracking URI
MLflow can open, names the MLflow store and registry accept, output directories that can be
written, and the devices `training.devices` asks for. `validate` and `train` both reach these checks
through `check_rules`, so both commands refuse the same configs with the same message (exit 2).

Nothing here contacts MLflow; the only write is `paths.unwritable`'s nameless probe file, removed at once.
JAX is imported only to count this host's devices, and only when a config asks for more than one; in a
job of several processes (`mixvae.processes`) not at all: counting devices would start JAX's backend,
after which the train path could no longer join the job, so only what the environment says is checked.
Each problem is a (dotted key or source, message) pair.
"""

from __future__ import annotations

import importlib.metadata
import posixpath
import re
from pathlib import Path
from urllib.parse import urlparse

from mixvae import paths, processes
from mixvae.config.schema import Config
from mixvae.tracking_uri import SOURCE_CONFIG, SOURCE_DEFAULT, check_uri, sqlite_file

Problem = tuple[str, str]

# Stores MLflow opens by URI scheme (file stores it no longer opens: tracking_uri.check_uri);
# plugins add schemes through this entry-point group.
_SERVER_SCHEMES = ("http", "https")
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")
_PLUGIN_GROUP = "mlflow.tracking_store"

# MLflow's limits on names (mlflow.utils.validation): tag keys may hold letters, digits, "_", "-", ".",
# " ", ":" and "/" and must not read as another path; tag values hold at most 8000 characters.
_TAG_KEY = re.compile(r"^[/\w.\- :]*$")
MAX_TAG_VALUE_LENGTH = 8000
WORK_DIR_KEY = "working directory"


def preflight_problems(cfg: Config, uri: str, uri_source: str) -> list[Problem]:
    """Every problem of the tracking store `uri` (from `uri_source`), MLflow's names and the output
    directories, in that order."""
    problems = _uri_problems(uri, _key_of(uri_source))
    problems += name_problems(cfg)
    problems += output_problems(cfg, uri, uri_source)
    return problems


def _key_of(uri_source: str) -> str:
    """The key a URI problem is reported under: the config key, the option or the variable it came from."""
    return "tracking.uri" if uri_source == SOURCE_CONFIG else uri_source


# --- the tracking URI ------------------------------------------------------------------------------------

def _plugin_schemes() -> set[str]:
    return {entry.name for entry in importlib.metadata.entry_points(group=_PLUGIN_GROUP)}


def _uri_problems(uri: str, key: str) -> list[Problem]:
    """Not a file store; a scheme MLflow opens a store for, a host for a server, at most one driver for a
    database. These messages name the scheme only: a URI may carry a password."""
    file_store = check_uri(uri)
    if file_store:
        return [(key, file_store)]
    text = uri.strip()
    if text in _OTHER_SCHEMES:
        return []
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    engine, _, driver = scheme.partition("+")
    known = _SERVER_SCHEMES + _DATABASE_SCHEMES + _OTHER_SCHEMES
    if scheme not in known and engine not in _DATABASE_SCHEMES and scheme not in _plugin_schemes():
        return [(key, f"tracking URI scheme '{scheme}:' is not one MLflow can open; use http(s)://host:port "
                      f"for a server or sqlite:///path/mlflow.db (schemes: {', '.join(known)})")]
    if engine in _DATABASE_SCHEMES and "+" in driver:
        return [(key, f"tracking URI scheme '{scheme}:' names more than one driver; write {engine}:// or "
                      f"{engine}+driver://")]
    if scheme in _SERVER_SCHEMES and not parsed.hostname:
        return [(key, f"tracking URI '{scheme}://…' names no host; write {scheme}://host:port")]
    return []


# --- names MLflow or mixvae refuse ----------------------------------------------------------------------

def _reads_as_another_path(name: str) -> bool:
    """MLflow's rule for names that may become file names: none that normalise to another path."""
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def name_problems(cfg: Config) -> list[Problem]:
    """The registered-model name, its alias and the run's tags, as the MLflow registry and store check
    them (the schema already holds experiment and run names to MLflow's lengths)."""
    problems: list[Problem] = []
    model = cfg.tracking.register_model
    if model and _reads_as_another_path(model):
        problems.append(("tracking.register_model", f"'{model}' is refused by the MLflow registry: a model "
                                                    "name must not read as a path such as '.' or '..'"))
    alias = cfg.tracking.model_alias
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        problems.append(("tracking.model_alias", f"'{alias}' is reserved by the MLflow registry"))
    for tag, value in cfg.experiment.tags.items():
        if tag.startswith(("mlflow.", "mixvae.")):
            problems.append(("experiment.tags", f"tag key '{tag}' uses a reserved prefix (mlflow. or mixvae.)"))
        elif not _TAG_KEY.match(tag) or _reads_as_another_path(tag):
            problems.append(("experiment.tags", f"tag key '{tag}' is refused by MLflow: tag keys may hold "
                                                "letters, digits, '_', '-', '.', ' ', ':' and '/' and must "
                                                "not read as a path"))
        if len(value) > MAX_TAG_VALUE_LENGTH:
            problems.append(("experiment.tags", f"the value of tag '{tag}' has {len(value)} characters; "
                                                f"MLflow keeps at most {MAX_TAG_VALUE_LENGTH}"))
    return problems


# --- output directories -----------------------------------------------------------------------------------

def output_problems(cfg: Config, uri: str, uri_source: str) -> list[Problem]:
    """The working directory (the default store, checkpoints), the sqlite store's directory and the
    report directory can be written."""
    problems: list[Problem] = []
    work = paths.work_dir()
    reason = paths.unwritable(work) if uri_source == SOURCE_DEFAULT else None
    if reason:
        problems.append((WORK_DIR_KEY, f"{reason}; mixvae writes its default store (mlflow.db), checkpoints "
                                       "and reports there; choose another with --workdir"))
    else:
        checkpoints = paths.checkpoints_dir("run").parent
        reason = paths.unwritable(checkpoints)
        if reason:
            problems.append((WORK_DIR_KEY, f"checkpoints cannot be written to {checkpoints}: {reason}; "
                                           "choose another working directory with --workdir"))
    database = sqlite_file(uri)
    if database is not None and uri_source != SOURCE_DEFAULT:
        reason = (f"{database} is a directory" if database.is_dir()
                  else paths.unwritable(database.absolute().parent))
        if reason:
            problems.append((_key_of(uri_source), f"the sqlite store {database} cannot be created: {reason}"))
    if cfg.tracking.report:
        reports = paths.under_work_dir(cfg.tracking.report_dir)
        reason = paths.unwritable(reports)
        if reason:
            problems.append(("tracking.report_dir", f"reports cannot be written to {reports}: {reason}"))
    return problems


# --- devices ----------------------------------------------------------------------------------------------

def uneven_batches(cfg: Config, count: int, devices: str) -> list[Problem]:
    """The training batch and the evaluation chunk are split evenly over ``count`` devices (``devices``
    says where the count came from). A padded last batch (drop_remainder: false) keeps the full batch
    size, so it splits like every other batch."""
    problems: list[Problem] = []
    t = cfg.training
    for key, size in (("training.batch_size", t.batch_size), ("training.eval_batch_size", t.eval_batch_size)):
        if size % count:
            lower, upper = size // count * count, -(-size // count) * count
            near = f"{lower} or {upper}" if lower else f"{upper}"
            problems.append((key, f"{size} images do not split evenly over {devices}; use a multiple of "
                                  f"{count} (e.g. {near})"))
    return problems


def device_problems(cfg: Config) -> list[Problem]:
    """``training.devices`` against the devices of this host (``jax.local_device_count()``): an explicit
    count it has, and for 'auto' batches that split over all of them. One device needs no check.
    In a job of several processes: the job's variables, and an explicit count that is a multiple of the
    processes (the rest is checked once the train path has joined the job)."""
    wanted = cfg.training.devices
    try:
        job = processes.from_env()
    except processes.JobError as exc:
        return [("environment", str(exc))]
    if job is not None:
        if wanted != "auto" and wanted % job.count:
            return [("training.devices", f"{wanted} device(s) cannot be shared by the {job.count} processes of "
                                         f"this job ({processes.ENV_COUNT}); use 'auto' or a multiple of "
                                         f"{job.count}")]
        return []
    if wanted == 1:
        return []
    import jax

    try:
        local, platform = jax.local_device_count(), jax.default_backend()
    except RuntimeError as exc:  # no backend could be initialised
        return [("training.devices", f"JAX finds no device to train on: {str(exc).splitlines()[0]}")]
    if wanted == "auto":
        return uneven_batches(cfg, local, f"training.devices 'auto' = {local} {platform} device(s)")
    if wanted > local:
        return [("training.devices", f"{wanted} devices asked for, but this host has {local} ({platform}); "
                                     f"use at most {local}, or 'auto' for all of them")]
    return []
