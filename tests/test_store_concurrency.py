"""Several processes on one local sqlite store: the store is created once (under a file lock beside
it, moved into place whole), a busy database is waited for instead of failing, and a damaged store
is named with what to do, exit 1, no traceback.

The fast tests use real sqlite files, real locks and threads; the slow one starts four real
`mixvae train` processes at the same moment in a folder without a store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from filelock import FileLock

from mixvae.cli import main
from mixvae.tracking import store
from mixvae.tracking.writer import TrackingError

TRAIN = ["train", "-c", "quick", "--set", "model.hidden_dims=[32]", "--set", "training.max_epochs=1",
         "--set", "tracking.log_model=false", "--set", "tracking.report=false"]  # the report: no store work
GARBAGE = b"these bytes are no sqlite database\n" * 200


def test_sqlite_file_of_a_uri(tmp_path):
    assert store.sqlite_file(f"sqlite:///{tmp_path}/a/mlflow.db") == tmp_path / "a" / "mlflow.db"
    assert store.sqlite_file("sqlite:///rel/mlflow.db") == tmp_path / "rel" / "mlflow.db"
    assert store.sqlite_file(f"sqlite:///{tmp_path}/m.db?mode=rw") == tmp_path / "m.db"
    for other in ("sqlite://", "sqlite:///:memory:", "http://127.0.0.1:5000", "postgresql://h/db", "databricks"):
        assert store.sqlite_file(other) is None, other
    assert store.lock_file(tmp_path / "mlflow.db") == tmp_path / "mlflow.db.lock"


def test_a_locked_database_is_tried_again_until_the_writer_is_done(tmp_path):
    db = tmp_path / "busy.db"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
    holder = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's long write
    released = threading.Timer(0.8, lambda: holder.execute("COMMIT"))
    released.start()
    tries = []

    def insert():
        tries.append(time.monotonic())
        with sqlite3.connect(db, timeout=0) as connection:  # no busy wait: fail at once while locked
            connection.execute("INSERT INTO t VALUES (1)")
        return "written"

    try:
        assert store.retry_if_locked(insert, retries=6, backoff_s=0.1) == "written"
    finally:
        released.join()
        holder.close()
    assert len(tries) >= 2  # the first try met the lock
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)
    # other errors are not retried
    calls = []
    with pytest.raises(ZeroDivisionError):
        store.retry_if_locked(lambda: calls.append(1) or 1 / 0, backoff_s=0.01)
    assert calls == [1]


def test_a_store_being_created_elsewhere_is_waited_for_then_named(tmp_path, monkeypatch):
    db = tmp_path / "new" / "mlflow.db"
    db.parent.mkdir()
    monkeypatch.setattr(store, "LOCK_WAIT_S", 0.5)
    with FileLock(str(store.lock_file(db))):  # another process is creating the store
        started = time.monotonic()
        with pytest.raises(TrackingError) as caught:
            store.prepare_store(f"sqlite:///{db}")
    assert time.monotonic() - started >= 0.5
    message = str(caught.value)
    assert str(db) in message and "still being created by another process" in message
    assert f"delete {store.lock_file(db)}" in message
    assert not db.exists()  # nothing half-made


@pytest.mark.parametrize("args", [["runs"], ["report", "0123abcd"], TRAIN], ids=["runs", "report", "train"])
def test_a_damaged_store_is_named_with_what_to_do(args, tmp_path, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    db = tmp_path / "mlflow.db"
    db.write_bytes(GARBAGE)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert f"the tracking store {db} is damaged or not an MLflow database (" in result.output
    assert "file is not a database" in result.output and "[SQL:" not in result.output
    assert f"mv {db} {db}.broken" in result.output and "--tracking-uri elsewhere" in result.output
    assert db.read_bytes() == GARBAGE  # the user's file is left as it was
    assert not list(tmp_path.glob(".mlflow.db.creating-*"))


def test_a_half_migrated_store_is_named(tmp_path):
    """A store whose creation stopped half-way (what two processes migrating at once used to leave)."""
    db = tmp_path / "half.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")
        connection.execute("CREATE TABLE experiments (experiment_id INTEGER PRIMARY KEY, name VARCHAR(256))")
        connection.execute("CREATE TABLE latest_metrics (key VARCHAR(250))")
    with pytest.raises(TrackingError) as caught:
        store.prepare_store(f"sqlite:///{db}")
    assert f"the tracking store {db} is damaged or not an MLflow database (" in str(caught.value)
    assert "start a new store" in str(caught.value)


@pytest.mark.slow
def test_sqlite_connections_wait_for_another_process_write(local_store):
    """Longer than Python's own 5 s busy timeout: without mixvae's wait this fails 'database is locked'."""
    from mlflow import MlflowClient

    store.prepare_store(local_store)
    holder = sqlite3.connect(store.sqlite_file(local_store), check_same_thread=False, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(6.5, lambda: holder.execute("COMMIT"))
    released.start()
    started = time.monotonic()
    try:
        experiment_id = MlflowClient(tracking_uri=local_store).create_experiment("waited")
    finally:
        released.join()
        holder.close()
    assert time.monotonic() - started >= 6
    assert MlflowClient(tracking_uri=local_store).get_experiment(experiment_id).name == "waited"


@pytest.mark.slow
def test_four_trainings_started_at_once_on_a_fresh_folder_all_finish(tmp_path, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("MLFLOW_")}
    # what a process killed while creating the store would leave behind
    stale = tmp_path / ".mlflow.db.creating-999999"
    stale.write_bytes(b"half a store")
    assert not (tmp_path / "mlflow.db").exists()
    processes = [subprocess.Popen([sys.executable, "-m", "mixvae", *TRAIN], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for _ in range(4)]
    outputs = [p.communicate(timeout=900)[0] for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
        assert "status=FINISHED" in output
    run_ids = {line.split("=", 1)[1] for output in outputs for line in output.splitlines()
               if line.startswith("run_id=")}
    assert len(run_ids) == 4
    assert not stale.exists() and not list(tmp_path.glob(".mlflow.db.creating-*"))
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    listed = subprocess.run([sys.executable, "-m", "mixvae", "runs", "--format", "json"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert {row["run_id"] for row in rows} == run_ids
    assert {row["status"] for row in rows} == {"FINISHED"}
    assert {Path(row["experiment"]).name for row in rows} == {"mixvae"}
