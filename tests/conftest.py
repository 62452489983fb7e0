"""Session fixtures shared by the whole suite.

- `mlflow_server`: a real `mlflow server` (sqlite backend, `--workers 1`) on 127.0.0.1, started once
  per session (per xdist worker) and stopped by PID at the end; yields its URL.
- `tracking_uri`: points MLFLOW_TRACKING_URI at that server for one test and gives the test its own
  experiment (MLFLOW_EXPERIMENT_NAME, also the `experiment_name` fixture).
- `sqlite_store_template` / `local_store`: a fresh local `mlflow.db` per test without paying
  MLflow's first-initialisation cost each time; `local_store` also chdirs into the test directory.
- `hermetic_work_dir` (every test): the test's temporary directory is the current directory and
  mixvae's working directory (MIXVAE_WORKDIR), so no test writes into the repository.
- `jax_cpu` / `subprocess_env`: JAX_PLATFORMS=cpu for subprocesses (and an env with the repository
  on PYTHONPATH).

Tests that use the server are marked `@pytest.mark.server`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

from mixvae import compilation_cache

# hermetic: Hypothesis keeps no example database and caches its constants outside the repository
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="mixvae-hypothesis-"))
# JAX's persistent compilation cache: one temporary directory for the whole session, never the user's
# ~/.cache. The xdist workers inherit it from the controller's environment (JAX locks the directory
# while it reads or writes), and it is on in every test process, not only under `mixvae train`: the
# many short trainings of one config then compile each program once. A cache hit still logs JAX's
# "Finished XLA compilation" line, which the compile-count test reads.
os.environ.setdefault("MIXVAE_TEST_JAX_CACHE", tempfile.mkdtemp(prefix="mixvae-jax-cache-"))
os.environ["MIXVAE_COMPILATION_CACHE"] = os.environ["MIXVAE_TEST_JAX_CACHE"]
compilation_cache.enable()
settings.register_profile("hermetic", database=None)
settings.load_profile("hermetic")

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 60.0
# Test servers run no MLflow job runner: its queue consumers are a dozen processes per server that the
# suite never uses and that compete with training for the 2 cores.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

if str(REPO_ROOT) not in sys.path:  # mixvae importable without an install
    sys.path.insert(0, str(REPO_ROOT))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mlflow_executable() -> str:
    candidate = VENV_BIN / "mlflow"
    return str(candidate) if candidate.exists() else "mlflow"


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Poll `url` until it answers 200; False on timeout or when `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    return False


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate, wait, then kill. A process started with `start_new_session=True` is stopped
    with its session's process group (its PID), so the web server it started goes too."""
    if process.poll() is not None:
        return
    own_group = os.getpgid(process.pid) == process.pid

    def send(sig: int) -> None:
        try:
            os.killpg(process.pid, sig) if own_group else process.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait(timeout=timeout)


def sigint_interrupts() -> None:
    """`preexec_fn` of a child that a test stops with SIGINT (Ctrl-C): a suite started in the background of a
    shell without job control (`nohup make test &`) inherits SIGINT ignored, and Python keeps an ignored
    SIGINT ignored, so the child would never see the Ctrl-C the test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_after(proc: subprocess.Popen, prefix: str, timeout: float = 240.0) -> list[str]:
    """Read the child's stderr until a line starts with ``prefix`` (at most ``timeout`` s), then press Ctrl-C
    (SIGINT). → the lines read, for the failure message."""
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        line = proc.stderr.readline()
        seen.append(line)
        if line.startswith(prefix):
            break
    proc.send_signal(signal.SIGINT)
    return seen


class MlflowServer:
    """A real `mlflow server` subprocess with a sqlite backend and a local artifact store."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = SERVER_START_TIMEOUT_S) -> MlflowServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(SERVER_ENV)
        command = [
            mlflow_executable(), "server",
            "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if not wait_for_http(f"{self.url}/health", timeout, self.process):
            self.stop()
            log_text = self.log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"mlflow server did not answer {self.url}/health within {timeout:.0f} s "
                f"(command: {' '.join(command)}); its log:\n{log_text}"
            )
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture(autouse=True)
def hermetic_work_dir(tmp_path, monkeypatch) -> Path:
    """Every output location derives from MIXVAE_WORKDIR; each test gets its own, and runs in it."""
    monkeypatch.setenv("MIXVAE_WORKDIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server.url
    finally:
        server.stop()


def _experiment_name_for(node_name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", node_name)[:80].strip("-")
    return f"test-{stem}-{uuid.uuid4().hex[:8]}"


def _reset_mlflow_state() -> None:
    """End runs a failed test left active and forget the URI it set (only if mlflow is loaded)."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return
    while mlflow.active_run() is not None:
        try:
            mlflow.end_run("KILLED")  # pops the run before calling the store
        except Exception:
            pass
    mlflow.set_tracking_uri(None)


@pytest.fixture
def tracking_uri(mlflow_server, monkeypatch, request) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", _experiment_name_for(request.node.name))
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield mlflow_server
    _reset_mlflow_state()


@pytest.fixture
def experiment_name(tracking_uri) -> str:
    """The experiment this test's runs go to (set in MLFLOW_EXPERIMENT_NAME by `tracking_uri`)."""
    return os.environ["MLFLOW_EXPERIMENT_NAME"]


@pytest.fixture(scope="session")
def sqlite_store_template(tmp_path_factory) -> Path:
    """One initialised sqlite tracking store (schema migrations done); copy it, never use it."""
    root = tmp_path_factory.mktemp("sqlite-template")
    db = root / "mlflow.db"
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def local_store(sqlite_store_template, tmp_path, monkeypatch) -> str:
    """A fresh copy of the template as `./mlflow.db` in tmp_path, which becomes the current
    directory; returns MLflow's default URI for it (`sqlite:///<tmp_path>/mlflow.db`)."""
    db = tmp_path / "mlflow.db"
    shutil.copyfile(sqlite_store_template, db)
    with sqlite3.connect(db) as connection:  # the Default experiment's artifacts stay here too
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (str(tmp_path / "mlruns" / "0"),),
        )
    monkeypatch.chdir(tmp_path)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID",
                 "MLFLOW_RUN_ID", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    yield f"sqlite:///{tmp_path}/mlflow.db"
    _reset_mlflow_state()


@pytest.fixture
def jax_cpu(monkeypatch) -> None:
    """JAX_PLATFORMS=cpu for subprocesses started by the test."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")


@pytest.fixture
def subprocess_env(jax_cpu) -> dict[str, str]:
    """os.environ for a subprocess: JAX on CPU, the repository first on PYTHONPATH and this
    interpreter's bin directory first on PATH (`mlflow`, `uvicorn`, `mixvae` of the venv)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PATH"] = os.pathsep.join(filter(None, [str(VENV_BIN), env.get("PATH")]))
    return env
