"""Tracking outages do not stop training: a real `mlflow server` of the test's own (127.0.0.1, a free
port, sqlite backend in the test's directory) is stopped by PID in the middle of a real `mixvae train`
subprocess for longer than MLflow's HTTP retry window, and started again on the same port and backend.

MLflow's retry window is shortened through its own environment variables (a value set in the
environment wins over mixvae's defaults), so an outage of a few seconds outlasts it without making
the test slow. The unit tests at the end exercise the spool and the outage classifier without a server.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import MlflowServer, free_port

# MLflow gives up on a call after one retry (a pause of at most a second or two): the outages below
# last several times longer.
SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
OUTAGE_S = 8.0
SERVER_START_S = 240  # the machine may be busy; a restart of the same store is quicker
LONG = ["-c", "quick", "--set", "model.hidden_dims=[32]", "--set", "training.patience=null",
        "--set", "tracking.log_model=false", "--set", "tracking.report=false",
        "--set", "training.checkpoint_every=5"]


class Training:
    """`mixvae train` in a subprocess whose stderr is read line by line while it runs."""

    def __init__(self, args: list[str], env: dict, cwd: Path):
        self.process = subprocess.Popen([sys.executable, "-m", "mixvae", *args], env=env, cwd=cwd,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.epoch = 0
        self.run_id: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("epoch "):
                self.epoch = int(line.split()[1].split("/")[0])
            elif line.strip().startswith("run ") and self.run_id is None:
                self.run_id = line.split()[1]

    def wait_for_epoch(self, epoch: int, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while self.epoch < epoch:
            assert self.process.poll() is None, "training ended early:\n" + self.stderr
            assert time.monotonic() < deadline, f"epoch {epoch} not reached:\n" + self.stderr
            time.sleep(0.05)

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        stdout = self.process.stdout.read()
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, stdout

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def server(tmp_path):
    started = MlflowServer(tmp_path / "server", port=free_port()).start(timeout=SERVER_START_S)
    yield started
    started.stop()


@pytest.fixture
def env(server, subprocess_env, tmp_path):
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("MLFLOW_")}
    env.update(SHORT_RETRIES, MLFLOW_TRACKING_URI=server.url, MLFLOW_EXPERIMENT_NAME="outage")
    return env


def epochs_logged(uri: str, run_id: str, key: str = "val/loss.total") -> list[int]:
    from mlflow import MlflowClient
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.mark.slow
def test_training_rides_out_a_server_restart(server, env, tmp_path):
    """The server goes away for longer than MLflow's retries at epoch 20 and comes back: training
    goes on meanwhile, and the run ends FINISHED with every epoch exactly once."""
    from mlflow import MlflowClient

    epochs = 300
    training = Training(["train", *LONG, "--set", f"training.max_epochs={epochs}"], env, tmp_path)
    training.wait_for_epoch(20)
    server.stop()
    stopped_at = training.epoch
    time.sleep(OUTAGE_S)
    trained_meanwhile = training.epoch - stopped_at
    server.start(timeout=SERVER_START_S)
    code, stdout = training.wait()
    assert code == 0, training.stderr[-4000:]
    assert "Traceback" not in training.stderr
    assert trained_meanwhile > 0, "training waited on the tracker during the outage"
    run = MlflowClient(server.url).get_run(training.run_id)
    assert run.info.status == "FINISHED", run.data.tags.get("mixvae.status_reason")
    assert epochs_logged(server.url, training.run_id) == list(range(1, epochs + 1))
    assert epochs_logged(server.url, training.run_id, "train/loss.total") == list(range(1, epochs + 1))
    assert "loss.total" in run.data.metrics  # the summary arrived too
    assert not (tmp_path / ".mixvae" / "checkpoints" / training.run_id / "spool").exists()


@pytest.mark.slow
def test_store_gone_until_the_end_keeps_the_spool_for_sync(server, env, tmp_path):
    """The server goes away at epoch 20 and stays away past the end: training completes, says what is
    kept where, keeps the spool and exits 1; with the server back, `mixvae sync` delivers every epoch
    once and ends the run FINISHED."""
    from mlflow import MlflowClient

    epochs = 120
    training = Training(["train", *LONG, "--set", f"training.max_epochs={epochs}",
                         "--set", "tracking.outage_tolerance_sec=2"], env, tmp_path)
    training.wait_for_epoch(20)
    server.stop()
    code, stdout = training.wait()
    assert code == 1, training.stderr[-4000:]
    assert "Traceback" not in training.stderr
    assert f"epoch {epochs}/{epochs}" in training.stderr  # training went on to the end
    spool = tmp_path / ".mixvae" / "checkpoints" / training.run_id / "spool"
    assert f"mixvae sync {training.run_id}" in training.stderr and str(spool) in training.stderr
    assert spool.is_dir() and any(spool.glob("*.json"))

    server.start(timeout=SERVER_START_S)
    assert MlflowClient(server.url).get_run(training.run_id).info.status == "RUNNING"
    synced = subprocess.run([sys.executable, "-m", "mixvae", "sync", training.run_id[:10]], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stderr[-4000:]
    assert f"status=FINISHED" in synced.stdout
    run = MlflowClient(server.url).get_run(training.run_id)
    assert run.info.status == "FINISHED"
    assert epochs_logged(server.url, training.run_id) == list(range(1, epochs + 1))
    assert "loss.total" in run.data.metrics
    assert not spool.exists()
    again = subprocess.run([sys.executable, "-m", "mixvae", "sync", training.run_id], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing to deliver" in again.stderr


# ---------------------------------------------------------------------------------------------
# Without a server: a client aimed at a port where nothing listens, and a local sqlite store


@pytest.fixture
def no_retries(monkeypatch):
    for name, value in {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "2"}.items():
        monkeypatch.setenv(name, value)


def test_outage_and_refusal_are_told_apart(local_store, no_retries):
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from mixvae.tracking.delivery import is_outage

    with pytest.raises(Exception) as nobody:
        MlflowClient(f"http://127.0.0.1:{free_port()}").search_experiments(max_results=1)
    assert is_outage(nobody.value)
    client = MlflowClient(local_store)
    run = client.create_run(client.create_experiment("refusals"))
    client.delete_run(run.info.run_id)
    with pytest.raises(Exception) as refused:
        client.log_batch(run.info.run_id, metrics=[Metric("a", 1.0, 0, 1)])
    assert not is_outage(refused.value)


def test_calls_wait_on_disk_while_nobody_answers_and_sync_delivers_them(local_store, no_retries, tmp_path):
    """The loop's calls return at once while the store is away; training's end keeps the final status
    in the spool and says how to deliver it; `sync_run` then delivers every call once, in order."""
    from mlflow import MlflowClient

    from mixvae.tracking.mlflow_writer import MlflowWriter
    from mixvae.tracking.spool import Spool, spool_dir
    from mixvae.tracking.sync import spooled_run, sync_run

    store = MlflowClient(local_store)
    run_id = store.create_run(store.create_experiment("outage")).info.run_id
    lines: list[str] = []
    writer = MlflowWriter(MlflowClient(f"http://127.0.0.1:{free_port()}"), run_id=run_id,
                          uri="http://alice:secret@127.0.0.1:1", outage_tolerance=0.5, notify=lines.append)
    started = time.monotonic()
    writer.log_params({"model.num_components": "3"})
    for epoch in (1, 2, 3):
        writer.log_epoch(epoch, {"val/loss.total": 10.0 - epoch})
    (tmp_path / "summary.json").write_text("{}")
    writer.log_artifact(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text("changed")  # the spool keeps the file as it was
    assert time.monotonic() - started < 1.0  # nothing waited on the store
    writer.check()  # an outage is not a failure
    assert writer.set_status("FINISHED") is False
    writer.close()
    assert lines and "not answering" in lines[0]
    assert f"mixvae sync {run_id}" in writer.undelivered and "secret" not in writer.undelivered
    spool = Spool(spool_dir(run_id))
    assert spool.summary() == "6 calls: epochs 1–3, 1 upload, the status FINISHED"
    assert "secret" not in (spool.directory / "run.json").read_text()

    assert spooled_run(run_id[:8]) == run_id
    result = sync_run(run_id, local_store)
    assert (result.status, result.left) == ("FINISHED", None)
    history = store.get_metric_history(run_id, "val/loss.total")
    assert [(m.step, m.value) for m in history] == [(1, 9.0), (2, 8.0), (3, 7.0)]
    assert store.get_run(run_id).data.params == {"model.num_components": "3"}
    summary = store.download_artifacts(run_id, "summary.json", str(tmp_path / "down"))
    assert Path(summary).read_text() == "{}"
    assert not spool.directory.exists() and spooled_run(run_id) is None


def test_a_spool_in_use_is_not_synced(local_store, tmp_path):
    from mlflow import MlflowClient

    from mixvae.tracking.spool import Spool, spool_dir
    from mixvae.tracking.writer import TrackingError

    store = MlflowClient(local_store)
    run_id = store.create_run(store.create_experiment("busy")).info.run_id
    Spool(spool_dir(run_id)).append({"op": "batch", "what": "set_tags", "tags": [["a", "b"]]})
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, fcntl; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('held', flush=True); time.sleep(60)"), str(spool_dir(run_id) / ".held")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from mixvae.tracking.sync import sync_run
        with pytest.raises(TrackingError, match="another mixvae process"):
            sync_run(run_id, local_store)
    finally:
        holder.kill()
        holder.wait()
    assert sync_run(run_id, local_store).left is None  # the holder is gone: the lock went with it
    assert store.get_run(run_id).data.tags["a"] == "b"
