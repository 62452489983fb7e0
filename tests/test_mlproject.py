"""The MLflow Project (MLproject and conda.yaml): pins agree, and `mlflow run . --env-manager local`
works for the validate and main entry points against the real test server; the registered model
predicts.

`mlflow run` starts the entry point in the project directory (the repository); its outputs go to the
test's MIXVAE_WORKDIR (set by the autouse `hermetic_work_dir` fixture and passed on in the
environment), never into the repository."""

from __future__ import annotations

import json
import subprocess
import tomllib
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]


def test_conda_pins_equal_pyproject_pins():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip_lists = [d["pip"] for d in conda["dependencies"] if isinstance(d, dict) and "pip" in d]
    auth = project["optional-dependencies"]["auth"]  # the sign-in server's extra is in conda.yaml too
    assert pip_lists and pip_lists[0] == project["dependencies"] + auth
    assert "python=3.11" in conda["dependencies"]
    assert set(auth) <= set(project["optional-dependencies"]["dev"])  # the tests start such a server
    for extra in project["optional-dependencies"].values():
        assert all("==" in dep for dep in project["dependencies"] + extra)


def test_mlproject_entry_points_and_parameters():
    spec = yaml.safe_load((REPO / "MLproject").read_text())
    points = spec["entry_points"]
    assert set(points) == {"main", "train", "validate", "report", "compare", "sweep"}
    assert points["main"] == points["train"]
    assert set(points["main"]["parameters"]) == {"config", "overrides", "register_model", "model_alias"}
    # MLproject parameter names have no dot, so they never collide with mixvae's dotted params.
    for point in points.values():
        assert all("." not in name for name in point.get("parameters", {}))


def mlflow_run(args, env, timeout=600):
    """`mlflow run <repository>` from the test's working directory (the entry point itself runs in the
    repository, as `mlflow run` does for a local project)."""
    return subprocess.run(["mlflow", "run", str(REPO), "--env-manager", "local", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.server
def test_mlflow_run_validate_entry_point(tracking_uri, experiment_name, subprocess_env):
    proc = mlflow_run(["-e", "validate", "-P", "config=configs/quick.yaml",
                       "--experiment-name", experiment_name], subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mixvae.kind"] == "validate"
    validation = json.loads(Path(client.download_artifacts(run.info.run_id, "validation.json")).read_text())
    assert validation["valid"] is True and validation["errors"] == []


@pytest.mark.slow
@pytest.mark.server
def test_mlflow_run_main_trains_registers_and_predicts(tracking_uri, experiment_name, subprocess_env):
    name = f"digits-{uuid.uuid4().hex[:6]}"
    proc = mlflow_run(["-P", "config=configs/quick.yaml",
                       "-P", "overrides=training.max_epochs=2; model.hidden_dims=[32]",
                       "-P", f"register_model={name}", "--experiment-name", experiment_name], subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["config"] == "configs/quick.yaml"          # logged by `mlflow run` itself
    assert params["model.hidden_dims"] == "[32]"             # logged by mixvae, dotted
    assert params["training.max_epochs"] == "2"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/loss.total")) == [1, 2]
    assert run.data.tags["mixvae.registered_model"].startswith(f"{name}/1@candidate")
    assert "REPORT.html" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # The entry point ran in the repository, but its checkpoints and report went to the working directory.
    assert not (REPO / "reports" / run.info.run_id).exists()
    assert not (REPO / ".mixvae" / "checkpoints" / run.info.run_id).exists()

    import mlflow.pyfunc
    model = mlflow.pyfunc.load_model(f"models:/{name}@candidate")
    from mixvae.config import load_config
    from mixvae.data import load_dataset
    ds = load_dataset(load_config("quick").config)
    frame = model.predict(np.asarray(ds.test_x[:2], np.float32))
    assert len(frame) == 2
    assert {"component", "responsibility_0", "responsibility_9", "reconstruction_error"} <= set(frame.columns)
    resp = frame[[f"responsibility_{k}" for k in range(10)]].to_numpy()
    assert np.allclose(resp.sum(axis=1), 1.0, atol=1e-5)
    assert (frame["reconstruction_error"] > 0).all()


@pytest.mark.slow
@pytest.mark.server
def test_mlflow_run_report_and_compare_entry_points(tracking_uri, experiment_name, subprocess_env, tmp_path):
    import sys
    ids = []
    for seed in (0, 1):
        proc = subprocess.run([sys.executable, "-m", "mixvae", "train", "-c", "quick", "--set", "training.max_epochs=1",
                               "--set", "model.hidden_dims=[32]", "--set", f"training.seed={seed}", "--no-report"],
                              env=subprocess_env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ids.append(next(line.split("=", 1)[1] for line in proc.stdout.splitlines() if line.startswith("run_id=")))
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)

    proc = mlflow_run(["-e", "compare", "-P", f"run_ids={ids[0]},{ids[1]}", "--experiment-name", experiment_name],
                      subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entry,) = client.search_runs([exp.experiment_id], "tags.`mixvae.kind` = 'compare'")
    assert entry.info.status == "FINISHED"
    assert "COMPARE.md" in {a.path for a in client.list_artifacts(entry.info.run_id)}

    proc = mlflow_run(["-e", "report", "-P", f"run_id={ids[0]}", "--experiment-name", experiment_name],
                      subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (entry,) = client.search_runs([exp.experiment_id], "tags.`mixvae.kind` = 'report'")
    assert entry.data.tags["mixvae.report_of"] == ids[0]
    assert "REPORT.md" in {a.path for a in client.list_artifacts(entry.info.run_id)}
    assert "REPORT.html" in {a.path for a in client.list_artifacts(ids[0])}  # uploaded to the reported run


@pytest.mark.slow
@pytest.mark.server
def test_mlflow_run_sweep_entry_point_makes_its_run_the_parent(tracking_uri, experiment_name, subprocess_env):
    proc = mlflow_run(["-e", "sweep", "-P", "trials=2",
                       "-P", "overrides=training.max_epochs=1; model.hidden_dims=[32]; tracking.log_model=false; "
                             "tracking.report=false",
                       "--experiment-name", experiment_name], subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("mixvae.kind") == "sweep"]
    assert parent.data.params["space"] == "configs/spaces/quick.yaml"   # logged by `mlflow run` itself
    assert parent.data.params["sweep.trials"] == "2"                    # logged by mixvae, dotted
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["mixvae.sweep.trial"] for r in trials) == ["0", "1"]
    assert parent.info.status == "FINISHED"
