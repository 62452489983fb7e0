"""Reaching a tracking store: mixvae's MLflow settings for its own process, and `connect`.

`connect(uri)` checks the URI, asks the store with a short timeout and one immediate retry whether
it answers, and returns an `MlflowClient`; an unreachable store fails fast, before training starts, and a server that refuses the sign-in (MLflow's basic-auth app) says so, naming
the user. Credentials never appear in these messages (see `mixvae.tracking_uri.redact`). Every later call relies on MLflow's own HTTP retries
(`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `..._BACKOFF_FACTOR`, `..._TIMEOUT`); mixvae only chooses their
defaults, and a value the user set wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from urllib.parse import unquote, urlparse

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mixvae.tracking.store import prepare_store
from mixvae.tracking.writer import TrackingError
from mixvae.tracking_uri import check_uri, redact

FIRST_CONTACT_TIMEOUT_S = 5  # an unreachable store must fail fast, before training starts

# MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) keep retrying for minutes;
# these ride out about half a minute without the server (waits of 0, 2, 4, 8 and 16 s, plus jitter).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}


def prepare_mlflow() -> None:
    """What mixvae sets for its own process: MLflow's HTTP retry defaults (unless set), no
    "View run" lines on stdout, no MLflow/SQLAlchemy deprecation warnings on the console, no
    alembic migration chatter."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    for module in (r"mlflow(\..*)?", r"sqlalchemy(\..*)?", r"alembic(\..*)?"):
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    for name in ("alembic", "mlflow.store.db.utils"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def first_contact_settings() -> Iterator[None]:
    """One immediate retry and a short timeout while we only ask "is anybody there?".

    The retry is for a connection the server drops once without an answer (seen on a loaded machine:
    `RemoteDisconnected` from a server that answered the next call). urllib3 makes a first retry
    without waiting, so an unreachable store still fails within seconds: at once when nothing
    listens, after at most twice the short timeout when nothing answers."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                                            "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "1"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(FIRST_CONTACT_TIMEOUT_S)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def short_reason(exc: BaseException, limit: int = 400) -> str:
    """One line naming the exception, for `tracking ... : <reason>` messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MlflowException) and not text.startswith(exc.error_code):
        text = f"{exc.error_code}: {text}"
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def signed_in_user(uri: str) -> str | None:
    """Whom MLflow's client signs in as: `MLFLOW_TRACKING_USERNAME`, else the user named in the URI."""
    name = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if name:
        return name
    userinfo, at, _ = urlparse(uri).netloc.rpartition("@")
    return (unquote(userinfo.partition(":")[0]) or None) if at else None


def sign_in_problem(exc: BaseException, uri: str, action: str = "read its experiments") -> str | None:
    """The message when a server refused who we are (HTTP 401) or what we asked (HTTP 403), else None."""
    code = getattr(exc, "error_code", None)
    user = signed_in_user(uri)
    token = bool(os.environ.get("MLFLOW_TRACKING_TOKEN"))
    where = f"the tracking server at {uri}"
    if code == "UNAUTHENTICATED":
        if user is None and not token:
            return (f"{where} requires sign-in and none was given (authentication failed): set "
                    "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        if user is None:
            who, fix = "the token in MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_TOKEN"
        elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
            who, fix = f"user '{user}'", "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        else:
            who, fix = f"user '{user}'", "the user and password in the tracking URI"
        return f"{where} rejected the sign-in of {who} (authentication failed): check {fix}"
    if code == "PERMISSION_DENIED":
        who = f"user '{user}'" if user else "an anonymous client"
        return f"{where} does not let {who} {action} (permission denied): ask the server's admin for access"
    return None


def connect(uri: str) -> MlflowClient:
    """A client for `uri`, after checking quickly that the store answers.

    Raises TrackingError("tracking store not reachable at <uri>: <reason>") otherwise, or the
    sign-in problem when the server refused the credentials."""
    problem = check_uri(uri)
    if problem:
        raise TrackingError(problem)
    prepare_mlflow()
    prepare_store(uri)  # a local sqlite store: created once across processes, clear words when broken
    with first_contact_settings():
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as exc:  # any failure here means "cannot use this store"
            raise TrackingError(sign_in_problem(exc, uri)
                                or f"tracking store not reachable at {uri}: {short_reason(exc)}") from exc
    return client
