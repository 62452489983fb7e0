"""Where runs are tracked: the tracking URI precedence and its check (also used by config validation).

This module does not import mlflow: `mixvae validate` calls it and must stay fast.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
from urllib.parse import urlparse

from mixvae.paths import default_store_uri

SOURCE_CLI = "--tracking-uri"
SOURCE_ENV = "MLFLOW_TRACKING_URI"
SOURCE_CONFIG = "tracking.uri"
SOURCE_DEFAULT = "default"

# Tracking URIs MLflow accepts without a scheme separator.
_SCHEMELESS_URIS = {"databricks", "databricks-uc", "uc"}

# The password in `scheme://user:password@host` (http, postgresql, mysql, ...): everything between the
# user name's colon and the last "@" before the path.
_URI_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s/]*@")
# Environment variables whose values are secrets MLflow's client sends to a tracking server.
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
REDACTED = "***"


def default_tracking_uri(directory: str | None = None) -> str:
    """MLflow's own default store, `mlflow.db`, in `directory` or else in mixvae's working directory
    (`$MIXVAE_WORKDIR`, else the current directory); an absolute path."""
    if directory is None:
        return default_store_uri()
    return f"sqlite:///{os.path.abspath(directory)}/mlflow.db"


def resolve_tracking_uri(cli_uri: str | None, cfg_uri: str | None) -> tuple[str, str]:
    """Return (uri, where it came from); first match wins.

    `--tracking-uri` → `MLFLOW_TRACKING_URI` → `tracking.uri` → `sqlite:///<working dir>/mlflow.db`.
    Empty strings count as "not given".
    """
    if cli_uri:
        return cli_uri, SOURCE_CLI
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if env_uri:
        return env_uri, SOURCE_ENV
    if cfg_uri:
        return cfg_uri, SOURCE_CONFIG
    return default_tracking_uri(), SOURCE_DEFAULT


def is_file_store(uri: str) -> bool:
    """True for `file:` URIs and bare filesystem paths (including Windows drive paths)."""
    text = uri.strip()
    if text in _SCHEMELESS_URIS or text.startswith("databricks://"):
        return False
    scheme = urlparse(text).scheme.lower()
    # A one-letter "scheme" is a Windows drive letter (C:\mlruns), i.e. a bare path.
    return scheme in ("", "file") or len(scheme) == 1


def redact_uri(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` in it replaced by ***; the user
    name and the host stay, so the line still says where and as whom."""
    return _URI_PASSWORD.sub(lambda m: f"{m.group(1)}:{REDACTED}@", text)


def redact(text: str) -> str:
    """`text` fit to print or log: URI passwords and the values of the secret variables
    (`MLFLOW_TRACKING_PASSWORD`, `MLFLOW_TRACKING_TOKEN`) replaced by ***."""
    text = redact_uri(text)
    for name in SECRET_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:  # a one-letter "secret" would blot out ordinary words
            text = text.replace(secret, REDACTED)
    return text


def check_uri(uri: str) -> str | None:
    """The message when `uri` names a file store (MLflow 3 dropped them), else None."""
    if not is_file_store(uri):
        return None
    return (
        f"tracking URI '{redact_uri(uri)}' is a file store: file stores are not supported; "
        "use sqlite:///path/mlflow.db or a server"
    )


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (relative to the current directory unless the
    path starts with a fourth slash), absolute; None for other URIs and in-memory databases."""
    text = uri.strip()
    if not text.lower().startswith("sqlite://"):
        return None
    rest = text[len("sqlite://"):]
    path = rest[1:].split("?", 1)[0] if rest.startswith("/") else ""
    if not path or path == ":memory:":
        return None
    return Path(path).expanduser().absolute()


def ui_link(uri: str, experiment_id: str, run_id: str | None = None) -> str | None:
    """The MLflow UI's page of a run (or of an experiment) on a tracking server, opened in the UI's model-training
    view (`workflowType=machine_learning`: MLflow 3's UI otherwise opens what the browser last chose, GenAI at
    first); None for a local store, which has no UI of its own until `mlflow ui` serves it."""
    if urlparse(uri).scheme not in ("http", "https"):
        return None
    page = f"#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")
    return f"{redact_uri(uri.rstrip('/'))}/{page}?workflowType=machine_learning"
