"""`mixvae sweep`: the space is checked before the first trial (every problem at once, exit 2); a sweep is
one MLflow parent with one complete child run per trial; the pruner stops trials whose runs end KILLED and
tagged; the parent keeps the best value, params and config; two worker processes on one journal storage
share the study: N trials in all, none twice, all under one parent. Real `mlflow server`, real Optuna."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from conftest import interrupt_after, sigint_interrupts
from mixvae.config import ConfigError, load_config
from mixvae.sweep.space import distributions, load_space, set_item

FAST = ["--set", "model.hidden_dims=[32]", "--set", "tracking.log_model=false", "--no-trial-reports"]


def write_space(path: Path, space: dict) -> Path:
    path.write_text(yaml.safe_dump(space))
    return path


def sweep(args, env, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "mixvae", "sweep", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def fields(stdout: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def children(client: MlflowClient, parent) -> list:
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                              max_results=1000)


# --- the space, checked before anything runs ---------------------------------------------------------------

def test_space_becomes_optuna_distributions_and_set_items(tmp_path):
    space = load_space(write_space(tmp_path / "s.yaml", {
        "model.kl_c_weight": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
        "training.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16},
        "model.use_gumbel_softmax": {"type": "categorical", "choices": [True, False]}}), "quick", [])
    d = distributions(space)
    assert d["model.kl_c_weight"].log and d["model.kl_c_weight"].low == 0.05
    assert d["training.batch_size"].step == 16 and d["training.batch_size"].high == 64
    assert d["model.use_gumbel_softmax"].choices == (True, False)
    cfg = load_config("quick", [set_item("model.use_gumbel_softmax", True), set_item("model.kl_c_weight", 0.25)]).config
    assert cfg.model.use_gumbel_softmax is True and cfg.model.kl_c_weight == 0.25


def test_every_space_problem_is_listed_at_once(tmp_path):
    path = write_space(tmp_path / "bad.yaml", {
        "model.kl_c_weigth": {"type": "float", "low": 0.1, "high": 1.0},        # misspelt key
        "model.kl_c_weight": {"type": "float", "low": 1.0, "high": 0.1},        # empty range
        "model.latent_dim": {"type": "int", "low": 0, "high": 4},               # 0 makes the config invalid
        "training.learning_rate": {"type": "float", "low": 0.0, "high": 0.1, "log": True},
        "model.usage_balance_weight": {"type": "categorical", "choices": []},
        "tracking.uri": {"type": "categorical", "choices": ["x"]},
    })
    with pytest.raises(ConfigError) as err:
        load_space(path, "quick", [])
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 6, text
    assert "did you mean 'model.kl_c_weight'" in text
    assert "the range is empty" in text
    assert "the value 0 makes the config invalid" in text and "model.latent_dim" in text
    assert "log range needs low > 0" in text
    assert "needs at least one choice" in text
    assert "tracking keys cannot be swept" in text


@pytest.mark.slow
def test_sweep_with_a_bad_space_exits_2_before_any_trial(subprocess_env, tmp_path):
    path = write_space(tmp_path / "bad.yaml", {"model.latent_dim": {"type": "int", "low": 0, "high": 4},
                                              "model.nope": {"type": "float", "low": 0, "high": 1}})
    proc = sweep(["quick", "--space", str(path), "--trials", "3", "--metric", "val/clustering.accuracy"],
                 subprocess_env, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "3 problems" in proc.stderr
    assert "model.nope: unknown key" in proc.stderr and "--metric val/clustering.accuracy" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "sweep_run_id" not in proc.stdout and not (tmp_path / "mlflow.db").exists()


# --- a sweep end to end ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.server
def test_sweep_nests_complete_runs_prunes_and_keeps_the_best(tracking_uri, subprocess_env, tmp_path):
    # A learning rate 200x too small cannot keep up with the trial before it: the median pruner stops it.
    space = write_space(tmp_path / "space.yaml", {
        "training.learning_rate": {"type": "categorical", "choices": [0.003, 0.000015]},
        "model.kl_c_weight": {"type": "float", "low": 0.1, "high": 1.0, "log": True}})
    proc = sweep(["quick", "--space", str(space), "--trials", "5", "--set", "training.max_epochs=4", *FAST,
                  "--startup-trials", "1", "--warmup-epochs", "1", "--sampler-seed", "3"], subprocess_env, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = fields(proc.stdout)
    client = MlflowClient(tracking_uri)
    parent = client.get_run(out["sweep_run_id"][0])
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags["mixvae.kind"] == "sweep" and tags["mixvae.sweep.metric"] == "val/loss.total"
    assert tags["mixvae.sweep.direction"] == "minimize" and tags["mixvae.sweep.trials"] == "5"
    runs = children(client, parent)
    assert sorted(int(r.data.tags["mixvae.sweep.trial"]) for r in runs) == [0, 1, 2, 3, 4]
    assert sorted(r.info.run_id for r in runs) == sorted(out["run_id"])
    states = {r.data.tags["mixvae.sweep.state"] for r in runs}
    assert "PRUNED" in states and "COMPLETE" in states, states
    complete = {}
    for r in runs:
        history = [m.value for m in client.get_metric_history(r.info.run_id, "val/loss.total")]
        if r.data.tags["mixvae.sweep.state"] == "COMPLETE":
            assert r.info.status == "FINISHED" and len(history) == 4
            assert float(r.data.tags["mixvae.sweep.value"]) == pytest.approx(min(history), rel=1e-9)
            complete[r.info.run_id] = min(history)
        else:  # pruned: the run ends KILLED, tagged, its checkpoints kept
            assert r.data.tags["mixvae.sweep.state"] == "PRUNED" and r.info.status == "KILLED"
            assert r.data.tags["mixvae.pruned"] == "true" and "pruned by Optuna" in r.data.tags["mixvae.status_reason"]
            assert len(history) < 4
            assert {a.path for a in client.list_artifacts(r.info.run_id, "checkpoints")} >= {"checkpoints/last"}
    best_id = min(complete, key=complete.get)
    assert parent.data.metrics["sweep.best_value"] == pytest.approx(complete[best_id])
    assert tags["mixvae.sweep.best_run_id"] == best_id
    best = client.get_run(best_id)
    assert float(out["best_value"][0]) == pytest.approx(complete[best_id])
    for key in ("training.learning_rate", "model.kl_c_weight"):
        assert math.isclose(float(tags[f"mixvae.sweep.best.{key}"]), json.loads(best.data.params[key]))
    # The best config is a ready-to-run config with the best trial's values.
    path = Path(client.download_artifacts(parent.info.run_id, "sweep/best_config.yaml", str(tmp_path)))
    cfg = load_config(str(path)).config
    assert cfg.training.learning_rate == json.loads(best.data.params["training.learning_rate"])
    assert cfg.model.kl_c_weight == pytest.approx(json.loads(best.data.params["model.kl_c_weight"]))
    assert cfg.training.max_epochs == 4
    assert yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "sweep/space.yaml",
                                                         str(tmp_path / "s"))).read_text()).keys() == {
        "training.learning_rate", "model.kl_c_weight"}
    # The last worker out built the sweep report and logged it to the parent, with the status it ended with.
    report = (tmp_path / out["report"][0]).read_text()
    assert "FINISHED" in report and best_id[:8] in report
    assert {"REPORT.md", "REPORT.html", "figures"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
@pytest.mark.server
def test_two_workers_share_one_study_and_one_parent(tracking_uri, subprocess_env, tmp_path):
    space = write_space(tmp_path / "space.yaml", {"model.kl_c_weight": {"type": "float", "low": 0.1, "high": 1.0}})
    args = ["quick", "--space", str(space), "--trials", "5", "--set", "training.max_epochs=2", *FAST,
            "--storage", str(tmp_path / "study.log"), "--pruner", "none"]
    workers = [subprocess.Popen([sys.executable, "-m", "mixvae", "sweep", *args], env=subprocess_env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [w.communicate(timeout=600) for w in workers]
    for worker, (stdout, stderr) in zip(workers, results):
        assert worker.returncode == 0, stderr[-3000:]
    outs = [fields(stdout) for stdout, _ in results]
    assert outs[0]["sweep_run_id"] == outs[1]["sweep_run_id"]
    assert all(o.get("run_id") for o in outs), "each worker ran at least one trial"
    client = MlflowClient(tracking_uri)
    parent = client.get_run(outs[0]["sweep_run_id"][0])
    runs = children(client, parent)
    assert sorted(int(r.data.tags["mixvae.sweep.trial"]) for r in runs) == [0, 1, 2, 3, 4]
    assert sorted(outs[0]["run_id"] + outs[1]["run_id"]) == sorted(r.info.run_id for r in runs)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["sweep.n_complete"] == 5.0

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    study = optuna.load_study(study_name=outs[0]["study"][0],
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.log"))))
    ran = [t for t in study.trials if "mixvae.skipped" not in t.user_attrs]
    assert sorted(t.number for t in ran) == [0, 1, 2, 3, 4]
    assert all(t.state.name == "COMPLETE" for t in ran)


@pytest.mark.slow
@pytest.mark.server
def test_ctrl_c_ends_the_trial_run_and_the_parent_killed(tracking_uri, subprocess_env, tmp_path):
    space = write_space(tmp_path / "space.yaml", {"model.kl_c_weight": {"type": "float", "low": 0.1, "high": 1.0}})
    proc = subprocess.Popen([sys.executable, "-m", "mixvae", "sweep", "quick", "--space", str(space), "--trials", "3",
                             "--set", "training.max_epochs=400", "--set", "training.patience=null", *FAST,
                             "--storage", str(tmp_path / "study.log")], env=subprocess_env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_interrupts)
    seen = interrupt_after(proc, "epoch 3/")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + err[-2000:]
    assert "Traceback" not in err
    client = MlflowClient(tracking_uri)
    parent = client.get_run(fields(out)["sweep_run_id"][0])
    assert parent.info.status == "KILLED" and parent.data.tags["mixvae.status_reason"] == "interrupted"
    (run,) = children(client, parent)
    assert run.info.status == "KILLED" and run.data.tags["mixvae.sweep.state"] == "FAIL"
    assert "checkpoints" in {a.path for a in client.list_artifacts(run.info.run_id)}  # resumable like any run

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    study = optuna.load_study(study_name=fields(out)["study"][0],
                              storage=JournalStorage(JournalFileBackend(str(tmp_path / "study.log"))))
    assert [t.state.name for t in study.trials] == ["FAIL"]
