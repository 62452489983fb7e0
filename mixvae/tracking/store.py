"""A local sqlite store that several processes can share: created once, never half-migrated, and
patient with a writer that holds the database for a moment.

MLflow creates the tables of a new sqlite store by running all of its schema migrations; two
processes that do this at once on the same file break each other and can leave a half-migrated,
unusable database behind. `prepare_store(uri)` therefore makes every mixvae process take a file lock
beside the database (`mlflow.db.lock` for `mlflow.db`) before it first opens the store:

- a store that does not exist yet is built in a temporary file next to it, under the lock, and moved
  into place only when complete, so an interrupted creation leaves no broken `mlflow.db`;
- a store that exists is opened once under the lock, so the processes that waited find it ready;
- a store that cannot be opened (not a database, half-migrated, made by an older MLflow) gives one
  message naming the file and what to do, instead of a traceback.

Every sqlite connection of the process also waits up to `BUSY_TIMEOUT_S` for another process's
write to end instead of failing at once with "database is locked", and the first contact is
retried a few times when the database is still busy.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mixvae.tracking.writer import TrackingError
from mixvae.tracking_uri import sqlite_file

LOCK_WAIT_S = 300        # how long a process waits for another one to finish creating the store
BUSY_TIMEOUT_S = 30      # how long one sqlite statement waits for another process's write
LOCKED_RETRIES = 5       # further tries of the first contact while the database is busy
LOCKED_BACKOFF_S = 0.5   # first wait between those tries; doubles each time

T = TypeVar("T")


def lock_file(database: Path) -> Path:
    """The lock that serialises creating and first opening `database`."""
    return database.with_name(database.name + ".lock")


# -- busy database ---------------------------------------------------------------------------------------

def is_locked(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is sqlite's "database is locked" / "database table is
    locked": another process is writing, and trying again shortly will do."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if "database is locked" in str(error) or "database table is locked" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def retry_if_locked(call: Callable[[], T], retries: int = LOCKED_RETRIES,
                    backoff_s: float = LOCKED_BACKOFF_S) -> T:
    """`call()`, tried again (waits of backoff_s, 2·backoff_s, …) while it fails because the sqlite
    database is locked; any other error, or the last one, is raised."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == retries or not is_locked(exc):
                raise
            time.sleep(backoff_s * 2 ** attempt)
    raise AssertionError("unreachable")


_busy_timeout_installed = False


def install_busy_timeout(seconds: float = BUSY_TIMEOUT_S) -> None:
    """Make every sqlite connection SQLAlchemy opens in this process wait up to `seconds` for a
    lock held by another process (sqlite's busy timeout; Python's default is 5 s)."""
    global _busy_timeout_installed
    if _busy_timeout_installed:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    def _set_busy_timeout(dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")

    event.listen(Engine, "connect", _set_busy_timeout)
    _busy_timeout_installed = True


# -- creating and opening ------------------------------------------------------------------------------

def _first_contact(uri: str) -> None:
    from mlflow import MlflowClient

    retry_if_locked(lambda: MlflowClient(tracking_uri=uri).search_experiments(max_results=1))


def _forget_engine(uri: str) -> None:
    """Close the pooled connections MLflow keeps for `uri` (the temporary file is moved away)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
    if engine is not None:
        engine.dispose()


def _create(database: Path) -> None:
    """Build a new store in a temporary file beside `database`, then move it into place whole."""
    for stale in database.parent.glob(f".{database.name}.creating-*"):
        stale.unlink(missing_ok=True)  # left by a process killed while creating (we hold the lock)
    partial = database.with_name(f".{database.name}.creating-{os.getpid()}")
    partial_uri = f"sqlite:///{partial}"
    try:
        _first_contact(partial_uri)
        _forget_engine(partial_uri)
        os.replace(partial, database)
    finally:
        partial.unlink(missing_ok=True)


def unusable_store_message(database: Path, exc: BaseException) -> str:
    """What is wrong with a store that exists but cannot be opened, and what to do about it."""
    from mixvae.tracking.connection import short_reason

    # SQLAlchemy appends the statement and a link to its docs; the first words say what is wrong
    reason = short_reason(exc, limit=1000).split(" [SQL:")[0].split(" (Background on this error")[0]
    if is_locked(exc):
        return (f"the tracking store {database} stayed locked by another process for over "
                f"{BUSY_TIMEOUT_S} s ({reason}); try again when the other writer is done")
    if "out-of-date database schema" in reason:
        return (f"the tracking store {database} was made by an older MLflow ({reason}); back it up, "
                f"then run `mlflow db upgrade sqlite:///{database}`")
    if "unable to open database file" in reason or "readonly" in reason or "ermission denied" in reason:
        return (f"the tracking store {database} cannot be opened for writing ({reason}); check the "
                f"file's and its folder's permissions, or point --tracking-uri elsewhere")
    return (f"the tracking store {database} is damaged or not an MLflow database ({reason}); move it "
            f"aside (e.g. `mv {database} {database}.broken`) and start a new store, or point "
            f"--tracking-uri elsewhere")


def prepare_store(uri: str) -> None:
    """Make sure a local sqlite store at `uri` exists and opens, creating it if needed, one process
    at a time; nothing for other URIs. Raises TrackingError naming the file when it cannot be used."""
    database = sqlite_file(uri)
    if database is None:
        return
    from filelock import FileLock, Timeout

    install_busy_timeout()
    lock = lock_file(database)
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock), timeout=LOCK_WAIT_S):
            if not database.exists() or database.stat().st_size == 0:
                _create(database)
            _first_contact(uri)
    except Timeout as exc:
        raise TrackingError(f"the tracking store {database} is still being created by another process "
                            f"after {LOCK_WAIT_S} s (lock {lock}); if no mixvae process is running, "
                            f"delete {lock} and try again") from exc
    except OSError as exc:
        raise TrackingError(f"the tracking store {database} cannot be created: {exc}") from exc
    except Exception as exc:
        raise TrackingError(unusable_store_message(database, exc)) from exc
