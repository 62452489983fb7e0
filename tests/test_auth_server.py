"""A tracking server that lets no one else in: MLflow's basic-auth app (`mlflow server --app-name
basic-auth`), a user signed in through MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, and
credentials that never show up in what mixvae logs, prints or reports.

The server tests start their own server process on a free 127.0.0.1 port (sqlite backend, auth
database and artifacts in a temporary directory), poll /health, and stop it by PID; they need
Flask-WTF (the `auth` extra, in `dev`). The first tests need no server: how the messages and the
redaction read."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, PERMISSION_DENIED, UNAUTHENTICATED

from conftest import SERVER_ENV, free_port, mlflow_executable, stop_process, wait_for_http
from mixvae.config import load_config, to_yaml
from mixvae.tracking.connection import sign_in_problem
from mixvae.tracking.writer import TrackingError
from mixvae.tracking_uri import redact, redact_uri

REPO = Path(__file__).resolve().parents[1]
TINY = ["--set", "model.hidden_dims=[32]", "--set", "training.max_epochs=1", "--set", "tracking.log_model=false"]
ADMIN, ADMIN_PASSWORD = "admin", f"admin-{uuid.uuid4().hex}"
USER, USER_PASSWORD = "alice", f"alice-{uuid.uuid4().hex}"  # unique: found only where it leaked
WRONG_PASSWORD = f"wrong-{uuid.uuid4().hex}"
SECRETS = (ADMIN_PASSWORD, USER_PASSWORD, WRONG_PASSWORD)


# --- messages and redaction (no server) -------------------------------------------------------------

def test_uri_passwords_and_secret_variables_are_redacted(monkeypatch):
    assert redact_uri("http://alice:s3cr:et@mlflow.internal:5000/x") == "http://alice:***@mlflow.internal:5000/x"
    assert redact_uri("postgresql://mlflow:PW@db:5432/mlflow and https://b:c@h") == \
        "postgresql://mlflow:***@db:5432/mlflow and https://b:***@h"
    assert redact_uri("http://mlflow.internal:5000") == "http://mlflow.internal:5000"
    assert redact_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", USER_PASSWORD)
    assert redact(f"rejected {USER_PASSWORD}!") == "rejected ***!"
    assert USER_PASSWORD not in str(TrackingError(f"at http://alice:{WRONG_PASSWORD}@h: {USER_PASSWORD}"))


def test_a_password_in_tracking_uri_is_not_in_the_logged_config():
    loaded = load_config("quick", [f"tracking.uri=http://alice:{USER_PASSWORD}@mlflow.internal:5000"])
    assert loaded.config.tracking.uri.endswith(f"{USER_PASSWORD}@mlflow.internal:5000")  # still used to connect
    text = to_yaml(loaded.config)
    assert USER_PASSWORD not in text and "http://alice:***@mlflow.internal:5000" in text


def test_sign_in_problems_name_the_user_and_what_to_set(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    refused = MlflowException("You are not authenticated.", error_code=UNAUTHENTICATED)
    uri = "http://mlflow.internal:5000"
    assert "requires sign-in and none was given" in sign_in_problem(refused, uri)
    assert "user 'bob'" in sign_in_problem(refused, "http://bob:x@mlflow.internal:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    message = sign_in_problem(refused, uri)
    assert "rejected the sign-in of user 'alice' (authentication failed)" in message
    assert "MLFLOW_TRACKING_PASSWORD" in message
    denied = MlflowException("Permission denied", error_code=PERMISSION_DENIED)
    assert "does not let user 'alice' open a run (permission denied)" in sign_in_problem(denied, uri, "open a run")
    assert sign_in_problem(MlflowException("boom", error_code=INTERNAL_ERROR), uri) is None


# --- a real server with sign-in -----------------------------------------------------------------------

def _request(url: str, path: str, payload: dict, user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read() or b"{}")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory) -> str:
    """`mlflow server --app-name basic-auth` with its admin, and the user alice (not an admin)."""
    root = tmp_path_factory.mktemp("auth-server")
    config = root / "basic_auth.ini"
    config.write_text("[mlflow]\ndefault_permission = READ\n"
                      f"database_uri = sqlite:///{root}/basic_auth.db\nadmin_username = {ADMIN}\n"
                      "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                      "auth_cache_ttl_seconds = 600\n")  # else every request pays a slow password hash
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(SERVER_ENV, MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
               MLFLOW_FLASK_SERVER_SECRET_KEY=uuid.uuid4().hex)
    port = free_port()
    command = [mlflow_executable(), "server", "--app-name", "basic-auth",
               "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for_http(f"{url}/health", 240, server), log_path.read_text(errors="replace")[-3000:]
        _request(url, "/api/2.0/mlflow/users/create", {"username": USER, "password": USER_PASSWORD},
                 ADMIN, ADMIN_PASSWORD)
        # The worker opens its tracking store on the first tracking call and hashes a password once per
        # user: pay both here, not within the CLI's short first-contact timeout.
        for user, password in ((ADMIN, ADMIN_PASSWORD), (USER, USER_PASSWORD)):
            _request(url, "/api/2.0/mlflow/experiments/search", {"max_results": 1}, user, password)
        yield url
    finally:
        stop_process(server)  # with the uvicorn worker it started (its own session)


@pytest.fixture
def as_admin(auth_server, monkeypatch) -> MlflowClient:
    """A client in this process signed in as the server's admin (sees every run)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    return MlflowClient(auth_server)


def _env(subprocess_env: dict, url: str, user: str | None, password: str | None) -> dict:
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = url
    if user is not None:
        env.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
    return env


def _mixvae(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mixvae", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _files_holding(root: Path, secrets=SECRETS) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file()
            and any(secret.encode() in path.read_bytes() for secret in secrets)]


def _all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)


@pytest.mark.slow
@pytest.mark.xdist_group("auth_server")
def test_signed_in_training_finishes_and_the_password_appears_nowhere(auth_server, subprocess_env,
                                                                     hermetic_work_dir, tmp_path_factory):
    experiment = f"auth-{uuid.uuid4().hex[:8]}"
    proc = _mixvae(["train", "-c", "quick", *TINY, "--experiment-name", experiment],
                   _env(subprocess_env, auth_server, USER, USER_PASSWORD), hermetic_work_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)["run_id"]
    for secret in SECRETS:
        assert secret not in proc.stdout and secret not in proc.stderr

    client = MlflowClient(auth_server)
    os.environ.update(MLFLOW_TRACKING_USERNAME=ADMIN, MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
    try:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.user_id == USER
        logged = {**run.data.params, **run.data.tags}
        assert logged and not [k for k, v in logged.items() if USER_PASSWORD in f"{k}={v}"]
        copy = Path(client.download_artifacts(run_id, "", str(tmp_path_factory.mktemp("artifacts"))))
    finally:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name, None)
    assert {"REPORT.md", "config.yaml", "logs"} <= {p.name for p in copy.iterdir()}
    assert _files_holding(copy) == []                       # artifacts: report, config, train.log, checkpoints
    report = hermetic_work_dir / "reports" / run_id / "REPORT.md"
    assert report.exists() and _files_holding(hermetic_work_dir) == []  # local report and checkpoints


@pytest.mark.slow
@pytest.mark.xdist_group("auth_server")
def test_refused_credentials_stop_before_training_and_leave_no_run(auth_server, subprocess_env,
                                                                    hermetic_work_dir, as_admin):
    before = len(_all_runs(as_admin))
    experiment = f"refused-{uuid.uuid4().hex[:8]}"
    proc = _mixvae(["train", "-c", "quick", *TINY, "--experiment-name", experiment],
                   _env(subprocess_env, auth_server, USER, WRONG_PASSWORD), hermetic_work_dir)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"rejected the sign-in of user '{USER}' (authentication failed)" in proc.stderr
    assert "MLFLOW_TRACKING_PASSWORD" in proc.stderr
    assert "Traceback" not in proc.stderr and "run_id=" not in proc.stdout
    assert "compiling" not in proc.stderr and "epoch 1/" not in proc.stderr  # stopped before training
    assert as_admin.get_experiment_by_name(experiment) is None
    assert len(_all_runs(as_admin)) == before
    assert not (hermetic_work_dir / ".mixvae" / "checkpoints").exists() or \
        not any((hermetic_work_dir / ".mixvae" / "checkpoints").iterdir())

    nobody = _mixvae(["runs"], _env(subprocess_env, auth_server, None, None), hermetic_work_dir)
    assert nobody.returncode == 1 and "requires sign-in and none was given" in nobody.stderr
    in_uri = auth_server.replace("http://", f"http://{USER}:{WRONG_PASSWORD}@")
    by_uri = _mixvae(["--tracking-uri", in_uri, "runs"], _env(subprocess_env, auth_server, None, None),
                     hermetic_work_dir)
    assert by_uri.returncode == 1 and f"user '{USER}'" in by_uri.stderr
    assert f"http://{USER}:***@127.0.0.1" in by_uri.stderr
    for result in (proc, nobody, by_uri):
        for secret in SECRETS:
            assert secret not in result.stdout and secret not in result.stderr
