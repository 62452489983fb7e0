"""The sweep report, rebuilt from MLflow alone: a parent run and its trial runs are written by hand with
MLflow's client (as `mixvae sweep` writes them), then read back with `load_sweep` and reported with
`mixvae report PARENT_ID`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from mixvae.cli import main
from mixvae.reporting import build_sweep_report_for_run
from mixvae.tracking import sweep_record
from mixvae.tracking.sweep_record import load_sweep, sweep_parent_id, typed_value
from mixvae.tracking.writer import RunNotFound

METRIC = "val/clustering.acc"
SPACE = {
    "model.kl_c_weight": {"type": "float", "low": 0.05, "high": 1.0, "log": True, "step": None},
    "training.batch_size": {"type": "int", "low": 16, "high": 64, "log": False, "step": 16},
    "model.use_gumbel_softmax": {"type": "categorical", "choices": [True, False]},
    "model.decoder_conditioning": {"type": "categorical", "choices": ["film", "cin", None]},
}
# number, state, the run's status, value, params, per-epoch values of METRIC
TRIALS = [
    (0, "COMPLETE", "FINISHED", 0.61, (0.1, 32, True, "film"), [0.40, 0.55, 0.61, 0.60]),
    (1, "PRUNED", "KILLED", 0.30, (0.9, 16, True, None), [0.20, 0.30]),
    (2, "COMPLETE", "FINISHED", 0.83, (0.2, 48, False, "cin"), [0.50, 0.70, 0.83, 0.81]),
    (3, "FAIL", "FAILED", None, (0.5, 64, False, None), [0.10]),
    (4, "COMPLETE", "FINISHED", 0.72, (0.07, 64, False, "film"), [0.45, 0.66, 0.72, 0.70]),
    # trial 5 failed before its run started: it has no run (the parent counts it)
    (6, "RUNNING", "RUNNING", None, (0.3, 32, True, "cin"), [0.35]),
]
KEYS = list(SPACE)
FIGURES = ("optimization_history", "param_importances", "parallel_coordinate", "slice")


def _log_file(client: MlflowClient, run_id: str, tmp: Path, name: str, text: str) -> None:
    path = tmp / name
    path.write_text(text)
    client.log_artifact(run_id, str(path), "sweep")


def _parent(client: MlflowClient, tmp: Path, trials: list, n_failed: int) -> str:
    tags = {"mixvae.kind": "sweep", "mixvae.version": "0.test", "mixvae.config_name": "quick",
            "mixvae.sweep.study": "quick-sweep-test", "mixvae.sweep.metric": METRIC,
            "mixvae.sweep.direction": "maximize", "mixvae.sweep.trials": "8", "mixvae.sweep.pruner": "median",
            "mixvae.sweep.storage": "in-memory"}
    parent = client.create_run("0", run_name="quick-sweep", tags=tags).info.run_id
    (tmp / "staging").mkdir(exist_ok=True)
    _log_file(client, parent, tmp / "staging", "space.yaml", yaml.safe_dump(SPACE, sort_keys=False))
    complete = [t for t in trials if t[1] == "COMPLETE"]
    now = int(time.time() * 1000)
    counts = {"complete": len(complete), "pruned": sum(t[1] == "PRUNED" for t in trials), "failed": n_failed}
    metrics = [Metric(f"sweep.n_{k}", float(v), now, 0) for k, v in counts.items()]
    if complete:
        best = max(complete, key=lambda t: t[3])
        _log_file(client, parent, tmp / "staging", "best_config.yaml", "# the best trial\nmodel: {}\n")
        metrics.append(Metric("sweep.best_value", best[3], now, 0))
        client.log_batch(parent, tags=[RunTag("mixvae.sweep.best_trial", str(best[0]))] +
                         [RunTag(f"mixvae.sweep.best.{k}", str(v)) for k, v in zip(KEYS, best[4])])
    client.log_batch(parent, metrics=metrics)
    return parent


def _child(client: MlflowClient, parent: str, trial) -> str:
    number, state, status, value, values, history = trial
    tags = {"mlflow.parentRunId": parent, "mixvae.kind": "train", "mixvae.sweep.parent": parent,
            "mixvae.sweep.trial": str(number), "mixvae.sweep.state": state}
    if value is not None:
        tags["mixvae.sweep.value"] = repr(float(value))
    if state == "PRUNED":
        tags.update({"mixvae.pruned": "true", "mixvae.status_reason": "pruned by Optuna's median pruner at epoch 2"})
    if state == "FAIL":
        tags["mixvae.status_reason"] = "FloatingPointError: the loss is nan"
    run_id = client.create_run("0", run_name=f"quick-sweep-trial-{number}", tags=tags).info.run_id
    now = int(time.time() * 1000)
    params = {k: json.dumps(v) for k, v in zip(KEYS, values)} | {"training.max_epochs": "4"}
    metrics = [Metric(METRIC, v, now + epoch, epoch) for epoch, v in enumerate(history, start=1)]
    metrics += [Metric("val/loss.total", 100.0 - epoch, now, epoch) for epoch in range(1, len(history) + 1)]
    if status != "RUNNING":
        metrics.append(Metric("training.epochs_completed", float(len(history)), now, 0))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def make_sweep(uri: str, tmp: Path, trials=TRIALS, n_failed: int = 2, end: bool = True) -> tuple[str, dict]:
    client = MlflowClient(uri)
    parent = _parent(client, tmp, trials, n_failed)
    runs = {t[0]: _child(client, parent, t) for t in trials}
    if end:
        client.set_terminated(parent, "FINISHED")
    return parent, runs


def _report(uri: str, parent: str, *extra: str):
    return CliRunner().invoke(main, ["--tracking-uri", uri, "report", parent, *extra])


# ---------------------------------------------------------------------------------------------------------

def test_load_sweep_types_params_values_and_states(local_store, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_record, "PAGE_SIZE", 2)  # the children come back over several pages
    parent, runs = make_sweep(local_store, tmp_path)
    record = load_sweep(parent[:10], local_store)
    assert record.run_id == parent and record.status == "FINISHED"
    assert (record.metric, record.direction, record.requested) == (METRIC, "maximize", 8)
    assert [t.number for t in record.trials] == [0, 1, 2, 3, 4, 6]
    assert [t.state for t in record.trials] == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL", "COMPLETE", "RUNNING"]
    assert [t.value for t in record.trials] == [0.61, 0.30, 0.83, None, 0.72, None]
    assert [t.run_id for t in record.trials] == [runs[n] for n in (0, 1, 2, 3, 4, 6)]
    assert record.space["training.batch_size"].step == 16 and record.space["model.kl_c_weight"].log is True
    by_number = {t.number: t for t in record.trials}
    assert by_number[2].params == {"model.kl_c_weight": 0.2, "training.batch_size": 48,
                                   "model.use_gumbel_softmax": False, "model.decoder_conditioning": "cin"}
    assert type(by_number[2].params["training.batch_size"]) is int
    assert type(by_number[0].params["model.use_gumbel_softmax"]) is bool
    assert by_number[1].params["model.decoder_conditioning"] is None
    assert "training.max_epochs" not in by_number[0].params  # only the swept keys
    assert by_number[2].intermediate_values == {1: 0.5, 2: 0.7, 3: 0.83, 4: 0.81}
    assert by_number[1].reason.startswith("pruned by Optuna") and by_number[1].status == "KILLED"
    assert by_number[0].epochs == 4 and by_number[6].epochs == 1 and by_number[6].end_time is None
    assert record.best().number == 2
    assert record.has_artifact("sweep/best_config.yaml")


def test_logged_strings_are_typed_back_by_the_space():
    dims = sweep_record.parse_space({"a.b": {"type": "categorical", "choices": [1, True, "1", None]},
                                     "a.c": {"type": "int", "low": 1, "high": 9, "log": False, "step": 1},
                                     "a.d": {"type": "float", "low": 0.0, "high": 1.0}})
    cat = dims["a.b"]
    assert typed_value("true", cat) == (True, True)
    assert typed_value("1", cat) == (True, 1) and type(typed_value("1", cat)[1]) is int
    assert typed_value('"1"', cat) == (True, "1")
    assert typed_value("null", cat) == (True, None)
    assert typed_value("2", cat) == (False, None)
    assert typed_value("7", dims["a.c"]) == (True, 7) and typed_value("7.5", dims["a.c"]) == (False, None)
    assert typed_value("0.25", dims["a.d"]) == (True, 0.25) and typed_value("nan", dims["a.d"])[0] is False
    with pytest.raises(ValueError):
        sweep_record.parse_space({"a.b": {"type": "gaussian"}})


def test_mixvae_report_builds_the_sweep_report_and_uploads_it(local_store, tmp_path):
    parent, runs = make_sweep(local_store, tmp_path)
    result = _report(local_store, parent)
    assert result.exit_code == 0, result.output
    out = tmp_path / "reports" / parent
    assert f"report=reports/{parent}/REPORT.md" in result.output
    text = (out / "REPORT.md").read_text()
    assert text.startswith("# mixvae sweep report: quick-sweep-test")
    assert "| metric | `val/clustering.acc` (maximize) |" in text
    assert "| trials | 8 requested · 5 done · 6 with a run |" in text
    assert "| by state | 3 complete · 1 pruned · 1 failed · 1 running |" in text
    assert "The parent run counts 2 failed (the trial runs show 1)" in text
    assert f"Trial **2**: `val/clustering.acc` = **0.83** (maximize), run `{runs[2]}`" in text
    assert "`mixvae train -c best_config.yaml`" in text and "--artifact-path sweep/best_config.yaml" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and f"`{runs[0][:8]}`" in line]
    assert len(rows) == 1
    assert rows[0].startswith(f"| 0 | COMPLETE | 0.61 | 0.1 | 32 | true | film | 4 | `{runs[0][:8]}` |")
    table = text[text.index("## Trials"):]
    assert [line.split(" | ")[0] for line in table.splitlines() if line[:3] in {f"| {n}" for n in range(10)}] \
        == ["| 0", "| 1", "| 2", "| 3", "| 4", "| 6"]
    assert "| 2 | COMPLETE | **0.83** (best) | 0.2 | 48 | false | cin |" in table
    assert "| 1 | PRUNED | 0.3 | 0.9 | 16 | true | null |" in table and "| 6 | RUNNING | — |" in table
    _assert_figures(out, FIGURES)
    assert "Not drawn" not in text
    html = (out / "REPORT.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    uploaded = {a.path for a in MlflowClient(local_store).list_artifacts(parent)}
    assert {"REPORT.md", "REPORT.html", "figures", "sweep"} == uploaded
    figures = {a.path for a in MlflowClient(local_store).list_artifacts(parent, "figures")}
    assert {f"figures/{name}.png" for name in FIGURES} <= figures


def _assert_figures(out: Path, names) -> None:
    import matplotlib.image as mpimg
    status = json.loads((out / "figures" / "status.json").read_text())
    for name in names:
        path = out / "figures" / f"{name}.png"
        assert status[name]["status"] == "success", status[name]
        assert path.stat().st_size > 5000
        image = mpimg.imread(path)
        assert image.shape[0] > 200 and image.shape[1] > 200, (name, image.shape)
        assert float(image[..., :3].std()) > 0.05, name  # not a blank canvas
        assert f"(figures/{name}.png)" in (out / "REPORT.md").read_text()


def test_one_complete_trial_says_why_the_figures_are_missing(local_store, tmp_path):
    trials = [(0, "COMPLETE", "FINISHED", 0.5, (0.1, 32, True, "film"), [0.3, 0.5]),
              (1, "PRUNED", "KILLED", 0.2, (0.6, 16, False, None), [0.2])]
    parent, _ = make_sweep(local_store, tmp_path, trials, n_failed=0, end=False)
    result = _report(local_store, parent, "--no-upload", "--no-html", "--out", "sweep-report")
    assert result.exit_code == 0, result.output
    out = tmp_path / "sweep-report"
    text = (out / "REPORT.md").read_text()
    importances = text[text.index("### Parameter importances"):text.index("### Parallel coordinates")]
    assert "Not drawn (skipped): needs at least 2 complete trials (1 complete)." in importances
    history = text[text.index("### Optimisation history"):text.index("### Parameter importances")]
    assert "Not drawn (skipped): needs at least 2 complete trials (1 complete)." in history
    assert not (out / "figures" / "param_importances.png").exists()
    assert not (out / "figures" / "optimization_history.png").exists()
    assert "(still running)" in text  # the parent was left RUNNING
    _assert_figures(out, ["slice"])
    assert not (out / "REPORT.html").exists()
    assert "REPORT.md" not in {a.path for a in MlflowClient(local_store).list_artifacts(parent)}
    # the end of a sweep builds the report just before it ends the parent, with the status it will get
    path = build_sweep_report_for_run(parent, local_store, "reports", html=False, upload=False,
                                      final_status="FINISHED")
    text = path.read_text()
    assert path == tmp_path / "reports" / parent / "REPORT.md"
    assert f"`{parent}` (quick-sweep) · FINISHED |" in text and "still running" not in text


def test_importances_need_a_swept_key_that_varies(local_store, tmp_path):
    same = (0.1, 32, True, "film")
    trials = [(0, "COMPLETE", "FINISHED", 0.5, same, [0.5]), (1, "COMPLETE", "FINISHED", 0.6, same, [0.6])]
    parent, _ = make_sweep(local_store, tmp_path, trials, n_failed=0)
    result = _report(local_store, parent, "--no-upload", "--no-html")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "reports" / parent / "REPORT.md").read_text()
    assert "every complete trial has the same values of the swept keys" in text
    _assert_figures(tmp_path / "reports" / parent, ["optimization_history", "parallel_coordinate", "slice"])


def test_unknown_runs_and_training_runs_are_told_apart(local_store, tmp_path):
    parent, runs = make_sweep(local_store, tmp_path, TRIALS[:1], n_failed=0)
    with pytest.raises(RunNotFound):
        load_sweep("0123456789abcdef0123456789abcdef", local_store)
    with pytest.raises(RunNotFound, match="not a sweep's parent run"):
        load_sweep(runs[0], local_store)
    assert sweep_parent_id(parent[:12], local_store) == parent
    assert sweep_parent_id(runs[0], local_store) is None
    result = _report(local_store, "0123456789abcdef0123456789abcdef")
    assert result.exit_code == 2 and "no run matches" in result.output


def test_values_outside_the_space_are_named_not_dropped(local_store, tmp_path):
    trials = [(0, "COMPLETE", "FINISHED", 0.5, (0.1, 32, True, "concat"), [0.5]),
              (1, "COMPLETE", "FINISHED", 0.6, (5.0, 48, False, "cin"), [0.6]),
              (2, "COMPLETE", "FINISHED", 0.7, (0.3, 16, False, "film"), [0.7])]
    parent, _ = make_sweep(local_store, tmp_path, trials, n_failed=0)
    record = load_sweep(parent, local_store)
    assert record.trials[0].unparsed == {"model.decoder_conditioning": '"concat"'}
    assert "model.decoder_conditioning" not in record.trials[0].params
    result = _report(local_store, parent, "--no-upload")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "reports" / parent / "REPORT.md").read_text()
    assert '| 0 | COMPLETE | 0.5 | 0.1 | 32 | true | — |' in text
    assert 'model.decoder_conditioning="concat" fits no value of the space' in text
    assert "- trial 1 is left out of the figures:" in text  # 5.0 lies outside [0.05, 1.0]
    assert "| 1 | COMPLETE | 0.6 | 5 | 48 | false | cin |" in text
