"""mixvae.tracking against a real MLflow server (runs, the writer, reading runs back, listing) and a
local sqlite store."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port

from mixvae.tracking_uri import check_uri, default_tracking_uri, resolve_tracking_uri
from mixvae.tracking.writer import MemoryWriter, RunNotFound, RunWriter, TrackingError

# ---------------------------------------------------------------------------------------------
# Without a store


def test_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, None) == (f"sqlite:///{tmp_path}/mlflow.db", "default")
    assert resolve_tracking_uri(None, "sqlite:///c.db") == ("sqlite:///c.db", "tracking.uri")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, "sqlite:///c.db") == ("http://env:5000", "MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("http://cli:1", "sqlite:///c.db") == ("http://cli:1", "--tracking-uri")
    assert default_tracking_uri(str(tmp_path)).startswith("sqlite:////")


def test_ui_links_open_the_model_training_view_and_hide_passwords():
    from mixvae.tracking_uri import ui_link
    assert ui_link("http://h:5000/", "3", "abc") == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_link("https://u:secret@h", "3") == "https://u:***@h/#/experiments/3?workflowType=machine_learning"
    assert ui_link("sqlite:///mlflow.db", "3", "abc") is None


@pytest.mark.parametrize("uri", ["file:./mlruns", "file:///tmp/mlruns", "./mlruns", "mlruns", "/abs/mlruns",
                                 "C:\\mlruns"])
def test_file_stores_are_rejected(uri):
    message = check_uri(uri)
    assert message is not None
    assert "file stores are not supported; use sqlite:///path/mlflow.db or a server" in message


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:////abs/mlflow.db", "http://127.0.0.1:5000",
                                 "https://mlflow.example.org", "postgresql://u:p@db/mlflow", "databricks"])
def test_database_and_server_uris_are_accepted(uri):
    assert check_uri(uri) is None


def test_uri_module_and_memory_writer_do_not_import_mlflow():
    code = ("import sys; import mixvae.tracking_uri; from mixvae.tracking import MemoryWriter; "
            "print('mlflow' in sys.modules)")
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": str(root), "PATH": "", "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ in the repository
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_memory_writer_keeps_everything(tmp_path):
    writer = MemoryWriter(artifact_root=tmp_path / "art")
    assert isinstance(writer, RunWriter)
    with pytest.raises(ValueError, match="contain a dot"):
        writer.log_params({"config": "x"})
    writer.log_params({"model.num_components": "10"})
    with pytest.raises(ValueError, match="cannot change"):
        writer.log_params({"model.num_components": "11"})
    writer.log_epoch(1, {"train/loss.total": np.float32(2.5)})
    writer.log_epoch(1, {"train/loss.total": 2.0})  # a re-logged step keeps the latest value
    writer.log_epoch(2, {"train/loss.total": 1.5})
    assert writer.histories() == {"train/loss.total": [(1, 2.0), (2, 1.5)]}
    assert all(type(v) is float for _, m in writer.epoch_calls for v in m.values())
    (tmp_path / "summary.json").write_text("{}")
    writer.log_artifact(tmp_path / "summary.json")
    writer.log_artifact(tmp_path / "summary.json", "copies")
    assert writer.artifacts == ["copies/summary.json", "summary.json"]
    assert writer.download_artifact("copies/summary.json", tmp_path / "dl").read_text() == "{}"
    assert writer.download_artifact("nope.json", tmp_path / "dl") is None
    writer.set_status("FAILED", "boom")
    assert (writer.status, writer.tags["mixvae.status_reason"]) == ("FAILED", "boom")
    with pytest.raises(ValueError):
        writer.set_status("DONE")


def test_latest_timestamp_wins_per_step():
    from mlflow.entities import Metric

    from mixvae.tracking.record import latest_per_step

    history = [Metric("k", 1.0, 100, 1), Metric("k", 2.0, 100, 2), Metric("k", 9.0, 300, 2),
               Metric("k", 3.0, 200, 3)]
    assert latest_per_step(history) == [(1, 1.0), (2, 9.0), (3, 3.0)]


def test_listing_formats_without_runs():
    from mixvae.tracking.listing import COLUMNS, format_rows

    assert format_rows([], "table").split() == list(COLUMNS)
    assert format_rows([], "csv").strip() == ",".join(COLUMNS)
    assert json.loads(format_rows([], "json")) == []


# ---------------------------------------------------------------------------------------------
# Helpers for store tests


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _write_run_files(root: Path) -> Path:
    """The artifact files a training run has (small stand-ins with real formats)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("model:\n  num_components: 3\ntraining:\n  seed: 0\n")
    (root / "summary.json").write_text(json.dumps({"metrics": {"loss.total": 1.5}, "best_epoch": 2}))
    diagnostics = root / "diagnostics"
    diagnostics.mkdir(exist_ok=True)
    np.savez(diagnostics / "eval.npz", responsibilities=np.full((4, 3), 1 / 3), labels=np.arange(4))
    np.savez(diagnostics / "history.npz", epoch=np.arange(1, 4), pi=np.ones((3, 3)) / 3)
    (root / "events.json").write_text(json.dumps([{"epoch": 2, "event": "unlock", "channel": 1}]))
    return root


# ---------------------------------------------------------------------------------------------
# Against the session's server


@pytest.mark.server
def test_writer_round_trip_through_load_run(tracking_uri, experiment_name, tmp_path):
    from mixvae.tracking import load_run, open_run

    files = _write_run_files(tmp_path / "files")
    writer = open_run(uri=tracking_uri, experiment_name="ignored-env-wins", run_name="round-trip",
                      tags={"mixvae.kind": "train"}, description="a test run")
    assert writer.experiment_name == experiment_name and isinstance(writer, RunWriter)
    params = {"model.num_components": "3", "model.hidden_dims": "[16, 8]", "training.seed": "0"}
    writer.log_params(params)
    writer.set_tags({"mixvae.architecture": "mix3_unsup_cin"})
    for epoch in (1, 2, 3):
        writer.log_epoch(epoch, {"train/loss.total": np.float32(10.0 - epoch), "val/loss.total": 11.0 - epoch,
                                 "val/mixture.K_eff": np.float64(2.5)})
        time.sleep(0.005)  # distinct timestamps between epochs
    writer.log_summary({"loss.total": 7.5, "mixture.K_eff": 2.5})
    writer.log_artifact(files / "config.yaml")
    writer.log_artifact(files / "summary.json")
    writer.log_artifacts(files / "diagnostics", "diagnostics")
    writer.log_artifact(files / "events.json", "curriculum")
    (files / "config.yaml").write_text("changed after logging\n")  # the writer uploads a snapshot
    assert writer.flush(timeout=30)
    writer.check()
    assert writer.set_status("FINISHED")
    writer.close()

    record = load_run(writer.run_id, tracking_uri)
    assert (record.run_id, record.run_name, record.status) == (writer.run_id, "round-trip", "FINISHED")
    assert record.experiment_name == experiment_name
    assert record.params == params
    assert record.tags["mixvae.kind"] == "train" and record.tags["mlflow.note.content"] == "a test run"
    assert record.tags["mixvae.architecture"] == "mix3_unsup_cin"
    assert record.metrics == {"loss.total": 7.5, "mixture.K_eff": 2.5}
    assert record.histories["train/loss.total"] == [(1, 9.0), (2, 8.0), (3, 7.0)]
    assert record.histories["val/mixture.K_eff"] == [(1, 2.5), (2, 2.5), (3, 2.5)]
    assert record.config == {"model": {"num_components": 3}, "training": {"seed": 0}}
    assert record.summary["best_epoch"] == 2
    np.testing.assert_allclose(record.diagnostics["responsibilities"], np.full((4, 3), 1 / 3))
    assert record.history_arrays["epoch"].tolist() == [1, 2, 3]
    assert record.events == [{"epoch": 2, "event": "unlock", "channel": 1}]
    paths = dict(record.artifacts)
    assert set(paths) == {"config.yaml", "summary.json", "diagnostics/eval.npz", "diagnostics/history.npz",
                          "curriculum/events.json"}
    assert paths["config.yaml"] == len("model:\n  num_components: 3\ntraining:\n  seed: 0\n")  # the snapshot
    assert record.model_uri is None
    assert record.start_time and record.end_time and record.end_time >= record.start_time

    # One log_batch per epoch: every value of an epoch carries the same timestamp.
    client = _client(tracking_uri)
    stamps = {}
    for key in ("train/loss.total", "val/loss.total", "val/mixture.K_eff"):
        for metric in client.get_metric_history(writer.run_id, key):
            stamps.setdefault(metric.step, set()).add(metric.timestamp)
    assert all(len(s) == 1 for s in stamps.values()) and len({next(iter(s)) for s in stamps.values()}) == 3


@pytest.mark.server
def test_missing_artifacts_read_as_none(tracking_uri):
    from mixvae.tracking import load_run, open_run

    writer = open_run(uri=tracking_uri, run_name="bare")
    writer.set_status("KILLED", "interrupted at epoch 0")
    writer.close()
    record = load_run(writer.run_id[:12], tracking_uri)
    assert record.status == "KILLED" and record.tags["mixvae.status_reason"] == "interrupted at epoch 0"
    assert (record.config, record.summary, record.diagnostics, record.history_arrays, record.events) == (
        None, None, None, None, None)
    assert record.artifacts == [] and record.histories == {} and record.metrics == {}
    assert writer.download_artifact("checkpoints/last", Path("/tmp") / uuid.uuid4().hex) is None


@pytest.mark.server
@pytest.mark.parametrize("status, reason", [("FAILED", "non-finite loss at epoch 7"), ("FINISHED", None)])
def test_statuses_and_reason(tracking_uri, status, reason):
    from mixvae.tracking import open_run

    writer = open_run(uri=tracking_uri, run_name=f"status-{status}")
    writer.log_epoch(1, {"train/loss.total": 1.0})
    assert writer.set_status(status, reason)
    writer.close()
    run = _client(tracking_uri).get_run(writer.run_id)
    assert run.info.status == status
    assert run.data.tags.get("mixvae.status_reason") == reason
    assert run.data.metrics == {"train/loss.total": 1.0}  # flushed before the status change


@pytest.mark.server
def test_context_manager_marks_failed_and_killed(tracking_uri):
    from mixvae.tracking import open_run

    with pytest.raises(ZeroDivisionError):
        with open_run(uri=tracking_uri, run_name="cm-failed") as writer:
            1 / 0  # noqa: B018
    run = _client(tracking_uri).get_run(writer.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["mixvae.status_reason"].startswith("ZeroDivisionError")
    with pytest.raises(KeyboardInterrupt):
        with open_run(uri=tracking_uri, run_name="cm-killed") as killed:
            raise KeyboardInterrupt
    assert _client(tracking_uri).get_run(killed.run_id).info.status == "KILLED"


@pytest.mark.server
def test_experiment_precedence(tracking_uri, experiment_name, monkeypatch):
    from mixvae.tracking import open_run

    client = _client(tracking_uri)
    env_run = open_run(uri=tracking_uri, experiment_name="from-config")
    cli_name = f"from-cli-{uuid.uuid4().hex[:8]}"
    env_run.set_status("FINISHED")
    env_run.close()
    cli_run = open_run(uri=tracking_uri, experiment_name=cli_name, experiment_from_cli=True)
    cli_run.set_status("FINISHED")
    cli_run.close()
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    config_name = f"from-config-{uuid.uuid4().hex[:8]}"
    config_run = open_run(uri=tracking_uri, experiment_name=config_name)
    config_run.set_status("FINISHED")
    config_run.close()
    assert env_run.experiment_name == experiment_name
    assert cli_run.experiment_name == cli_name
    assert config_run.experiment_name == config_name  # created when missing
    assert client.get_experiment_by_name(config_name) is not None
    assert client.get_run(config_run.run_id).info.experiment_id == config_run.experiment_id


@pytest.mark.server
def test_mlflow_run_id_is_attached_without_set_experiment(tracking_uri, monkeypatch):
    from mixvae.tracking import open_run

    client = _client(tracking_uri)
    project = f"project-{uuid.uuid4().hex[:8]}"
    experiment_id = client.create_experiment(project)
    run = client.create_run(experiment_id, run_name="from-mlflow-run")
    client.log_param(run.info.run_id, "config", "configs/quick.yaml")  # an MLproject parameter
    monkeypatch.setenv("MLFLOW_RUN_ID", run.info.run_id)
    other = f"other-{uuid.uuid4().hex[:8]}"
    writer = open_run(uri=tracking_uri, experiment_name=other, experiment_from_cli=True, run_name="ignored")
    assert writer.run_id == run.info.run_id and writer.attached
    assert "MLFLOW_RUN_ID" not in os.environ  # used once: a seed group's children are new runs
    child = open_run(uri=tracking_uri, run_name="child", nested_parent_id=writer.run_id)
    assert child.run_id != writer.run_id and child.experiment_id == experiment_id
    child.set_status("FINISHED")
    child.close()
    assert writer.experiment_name == project
    writer.log_params({"model.num_components": "3"})
    writer.set_status("FINISHED")
    writer.close()
    got = client.get_run(run.info.run_id)
    assert got.info.experiment_id == experiment_id and got.info.run_name == "from-mlflow-run"
    assert got.data.params == {"config": "configs/quick.yaml", "model.num_components": "3"}
    assert client.get_experiment_by_name(other) is None


@pytest.mark.server
def test_resume_reopens_run_and_latest_value_wins(tracking_uri):
    from mixvae.tracking import load_run, open_run

    first = open_run(uri=tracking_uri, run_name="resumable")
    for epoch in (1, 2, 3):
        first.log_epoch(epoch, {"train/loss.total": float(epoch)})
    first.set_status("KILLED", "interrupted at epoch 3")
    first.close()
    time.sleep(0.01)
    resumed = open_run(uri=tracking_uri, resume_run_id=first.run_id)
    assert resumed.run_id == first.run_id
    assert _client(tracking_uri).get_run(first.run_id).info.status == "RUNNING"
    assert resumed.run_name == "resumable"
    for epoch in (3, 4):  # epoch 3 logged again after the last checkpoint
        resumed.log_epoch(epoch, {"train/loss.total": 10.0 * epoch})
    resumed.set_status("FINISHED")
    resumed.close()
    record = load_run(first.run_id, tracking_uri)
    assert record.status == "FINISHED"
    assert record.histories["train/loss.total"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


@pytest.mark.server
def test_nested_child_run(tracking_uri):
    from mixvae.tracking import open_run

    parent = open_run(uri=tracking_uri, run_name="group", tags={"mixvae.kind": "seed_group"})
    child = open_run(uri=tracking_uri, run_name="seed-0", nested_parent_id=parent.run_id)
    child.set_status("FINISHED")
    child.close()
    parent.set_status("FINISHED")
    parent.close()
    client = _client(tracking_uri)
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id
    assert client.get_run(parent.run_id).info.status == "FINISHED"


@pytest.mark.server
def test_log_inputs_records_datasets(tracking_uri, tmp_path):
    from mixvae.tracking import open_run

    source = tmp_path / "digits.csv"
    source.write_text("0,1\n")
    features = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    records = {
        "training": {"name": "digits-train", "features": features, "targets": np.array([0, -1, 2, -1, 4, 5]),
                     "source": str(source), "context": "training", "digest": "0badc0de"},
        "validation": {"name": "digits-val", "features": features[:3], "targets": np.arange(3),
                       "source": str(source), "context": "validation"},
    }
    writer = open_run(uri=tracking_uri, run_name="inputs")
    writer.log_inputs(records)
    writer.set_status("FINISHED")
    writer.close()
    inputs = _client(tracking_uri).get_run(writer.run_id).inputs.dataset_inputs
    seen = {i.dataset.name: ({t.key: t.value for t in i.tags}["mlflow.data.context"], i.dataset.digest)
            for i in inputs}
    assert seen == {"digits-train": ("training", writer.dataset_digests["digits-train"]),
                    "digits-val": ("validation", writer.dataset_digests["digits-val"])}
    assert writer.dataset_digests["digits-train"] == "0badc0de"  # the record's own digest is kept
    assert len(writer.dataset_digests["digits-val"]) == 8  # else MLflow computes one
    assert str(source) in next(i.dataset.source for i in inputs if i.dataset.name == "digits-train")


@pytest.mark.server
def test_upload_dir_replaces_earlier_versions(tracking_uri, tmp_path):
    from mixvae.tracking import open_run, upload_dir

    writer = open_run(uri=tracking_uri, run_name="report-upload")
    writer.set_status("FINISHED")
    writer.close()
    report = tmp_path / "report"
    (report / "figures" / "core").mkdir(parents=True)
    (report / "REPORT.md").write_text("first")
    (report / "figures" / "core" / "loss.png").write_bytes(b"png")
    upload_dir(writer.run_id, report, uri=tracking_uri)
    (report / "REPORT.md").write_text("second version")
    upload_dir(writer.run_id, report, uri=tracking_uri)
    got = writer.download_artifact("REPORT.md", tmp_path / "dl")
    assert got.read_text() == "second version"
    assert writer.download_artifact("figures/core/loss.png", tmp_path / "dl2").read_bytes() == b"png"


@pytest.mark.server
def test_failing_call_surfaces_in_check(tracking_uri):
    """A call the store refuses is the run's tracking failure, reported with the store's own reason
    and the call it failed on; the first refusal is the one reported."""
    from mixvae.tracking import open_run

    writer = open_run(uri=tracking_uri, run_name="doomed")
    writer.check()
    _client(tracking_uri).delete_run(writer.run_id)  # the store now refuses every write to it
    writer.log_epoch(1, {"train/loss.total": 1.0})
    writer.log_epoch(2, {"train/loss.total": 2.0})  # refused too; the first refusal stays the reason
    assert writer.flush(timeout=60)
    expected = r"^tracking failure: log_batch of epoch 1 failed: INVALID_PARAMETER_VALUE"
    with pytest.raises(TrackingError, match=expected):
        writer.check()
    # The store refuses the final status too: reported, not raised.
    assert writer.set_status("FAILED", "tracking failure") is False
    writer.close()


@pytest.mark.server
def test_prefix_resolution_on_the_server(tracking_uri):
    from mixvae.tracking import load_run, open_run

    writer = open_run(uri=tracking_uri, run_name="prefixed")
    writer.set_status("FINISHED")
    writer.close()
    assert load_run(writer.run_id[:8], tracking_uri).run_id == writer.run_id
    assert load_run(writer.run_id.upper(), tracking_uri).run_id == writer.run_id
    missing = "0123abcd" if not writer.run_id.startswith("0123abcd") else "fedc9876"
    with pytest.raises(RunNotFound, match=f"no run matches '{missing}'"):
        load_run(missing, tracking_uri)
    with pytest.raises(RunNotFound, match="no run matches '3f2a'"):
        load_run("3f2a", tracking_uri)
    with pytest.raises(RunNotFound, match="no run matches"):
        load_run("f" * 32, tracking_uri)


@pytest.mark.server
def test_listing_rows(tracking_uri, experiment_name):
    from mixvae.tracking import list_runs, open_run
    from mixvae.tracking.listing import ListingError, format_rows

    def make(name, kind, summary=None, status="FINISHED"):
        writer = open_run(uri=tracking_uri, run_name=name, tags={"mixvae.kind": kind,
                                                                  "mixvae.architecture": f"arch-{name}"})
        if summary:
            writer.log_summary(summary)
        writer.set_status(status, None if status == "FINISHED" else "boom")
        writer.close()
        time.sleep(0.01)
        return writer.run_id

    old = make("old", "train", {"loss.total": 20.0, "clustering.acc": 0.4})
    failed = make("failed", "train", status="FAILED")
    report = make("report", "report")
    new = make("new", "train", {"loss.total": 10.0, "clustering.acc": 0.9, "mixture.K_eff": 7.5})

    rows = list_runs(tracking_uri, [experiment_name])
    assert [r["run_id"] for r in rows] == [new, failed, old]
    top = rows[0]
    assert (top["name"], top["status"], top["arch"]) == ("new", "FINISHED", "arch-new")
    assert top["experiment"] == experiment_name
    assert (top["loss.total"], top["clustering.acc"], top["mixture.K_eff"]) == (10.0, 0.9, 7.5)
    assert rows[1]["loss.total"] is None and rows[1]["tags"]["mixvae.status_reason"] == "boom"
    assert len(top["started"]) == 16 and top["duration"].endswith("s")
    every_kind = list_runs(tracking_uri, [experiment_name], all_kinds=True)
    assert [r["run_id"] for r in every_kind] == [new, report, failed, old]
    assert [r["run_id"] for r in list_runs(tracking_uri, [experiment_name], status="failed")] == [failed]
    assert [r["run_id"] for r in list_runs(tracking_uri, [experiment_name],
                                           filter="metrics.`clustering.acc` > 0.8")] == [new]
    assert len(list_runs(tracking_uri, [experiment_name], limit=1)) == 1
    assert list_runs(tracking_uri, [f"nothing-{uuid.uuid4().hex}"]) == []
    assert new in {r["run_id"] for r in list_runs(tracking_uri, all_experiments=True, limit=1000)}
    with pytest.raises(ListingError):
        list_runs(tracking_uri, [experiment_name], status="DONE")
    with pytest.raises(ListingError):
        list_runs(tracking_uri, [experiment_name], filter="metrics.x >>> 1")

    table = format_rows(rows, "table").splitlines()
    assert table[0].split() == ["RUN_ID", "NAME", "STATUS", "STARTED", "DURATION", "ARCH", "loss.total",
                                "clustering.acc", "mixture.K_eff"]
    assert table[1].startswith(new) and "0.9" in table[1] and len(table) == 4
    csv_lines = format_rows(rows, "csv").splitlines()
    assert csv_lines[1].split(",")[0] == new and csv_lines[2].split(",")[-3:] == ["", "", ""]
    objects = json.loads(format_rows(rows, "json"))
    assert objects[0]["experiment"] == experiment_name and objects[0]["tags"]["mixvae.kind"] == "train"


# ---------------------------------------------------------------------------------------------
# Failure at the start


def test_unreachable_store_fails_fast():
    from mixvae.tracking import open_run

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingError, match=rf"^tracking store not reachable at {uri}: "):
        open_run(uri=uri, experiment_name="never")
    assert time.monotonic() - started < 15


def test_open_run_refuses_file_store():
    from mixvae.tracking import open_run

    with pytest.raises(TrackingError, match="file stores are not supported"):
        open_run(uri="file:./mlruns")


def test_listing_unreachable_store_raises_tracking_error():
    from mixvae.tracking import list_runs

    with pytest.raises(TrackingError, match="not reachable"):
        list_runs(f"http://127.0.0.1:{free_port()}")


# ---------------------------------------------------------------------------------------------
# The default local store


def test_default_local_store_and_ambiguous_prefixes(local_store, tmp_path):
    from mixvae.tracking import load_run, open_run

    uri, source = resolve_tracking_uri(None, None)
    assert (uri, source) == (local_store, "default")
    first = open_run(uri=uri, run_name="one")
    for epoch in (1, 2):
        first.log_epoch(epoch, {"train/loss.total": 3.0 - epoch, "val/loss.total": 4.0 - epoch})
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "summary.json").write_text('{"metrics": {}}')
    first.log_artifact(tmp_path / "files" / "summary.json")
    first.set_status("FINISHED")
    first.close()
    second = open_run(uri=uri, run_name="two")
    second.set_status("FINISHED")
    second.close()
    assert first.experiment_name == "mixvae"
    assert (tmp_path / "mlruns").is_dir()  # artifacts next to mlflow.db
    record = load_run(first.run_id[:8])  # no URI given: the default store of the current directory
    assert record.summary == {"metrics": {}}
    assert record.histories == {"train/loss.total": [(1, 2.0), (2, 1.0)],
                                "val/loss.total": [(1, 3.0), (2, 2.0)]}

    # Give the second run an id sharing the first one's 10-character prefix.
    twin = first.run_id[:10] + second.run_id[10:]
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        connection.execute("UPDATE runs SET run_uuid = ? WHERE run_uuid = ?", (twin, second.run_id))
    with pytest.raises(RunNotFound, match="is ambiguous") as excinfo:
        load_run(first.run_id[:10])
    assert first.run_id in str(excinfo.value) and twin in str(excinfo.value)
    assert load_run(first.run_id).run_id == first.run_id  # the full id stays unique


def test_first_contact_asks_again_when_the_server_drops_the_connection_once(monkeypatch):
    """A server that closes the first connection without an answer (seen once on a loaded CI machine)
    and answers the next: connecting succeeds, with one request more."""
    import http.server
    import threading

    from mixvae.tracking.connection import connect

    requests = []

    class DropFirst(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            requests.append(self.path)
            if len(requests) == 1:  # close without a status line: the client sees RemoteDisconnected
                self.close_connection = True
                return
            body = json.dumps({"experiments": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), DropFirst)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            monkeypatch.delenv(name, raising=False)
        connect(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert len(requests) == 2 and all("experiments/search" in path for path in requests)
