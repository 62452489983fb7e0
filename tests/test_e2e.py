"""End to end: the real `mixvae` CLI in a subprocess against the session's real `mlflow server` —
training with everything logged and reported, Ctrl-C and resume, a non-finite loss, a seed group
and compare, an unreachable store. Slow by nature: each training is a whole run, report included.

Every subprocess runs in the test's own working directory (the current directory and MIXVAE_WORKDIR,
set by the autouse `hermetic_work_dir` fixture), so checkpoints and reports never land in the
repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import interrupt_after, sigint_interrupts
from mlflow import MlflowClient

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "model.hidden_dims=[32]", "--set", "training.max_epochs=2"]


def mixvae(args, env, cwd, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "mixvae", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, **kw)


def stdout_fields(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


@pytest.fixture
def env(tracking_uri, subprocess_env):
    return dict(subprocess_env)


@pytest.fixture
def workdir(hermetic_work_dir):
    """The test's working directory: the subprocesses' current directory and MIXVAE_WORKDIR."""
    return hermetic_work_dir


def test_train_logs_everything_and_reports(env, workdir, tracking_uri):
    proc = mixvae(["train", "-c", str(REPO / "configs" / "quick.yaml"), *FAST], env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = stdout_fields(proc.stdout)
    assert list(out)[:2] == ["run_id", "status"] and out["status"] == "FINISHED"
    assert out["model_uri"].startswith("models:/m-")
    assert "Traceback" not in proc.stderr
    client = MlflowClient(tracking_uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.num_components"] == "10" and params["model.hidden_dims"] == "[32]"
    assert all("." in k for k in params)
    assert not any(k.startswith("tracking.") for k in params)
    tags = run.data.tags
    assert tags["mixvae.kind"] == "train"
    assert tags["mixvae.architecture"] == "mix10-dec_unsup_cin"
    assert tags["mixvae.split_sizes"] == "1437/180/180"
    assert len(tags["mixvae.dataset_digest"]) == 8
    assert tags["mixvae.report_status"] == "ok" and tags["mixvae.model_status"] == "ok"
    hist = client.get_metric_history(run.info.run_id, "val/loss.total")
    assert sorted(m.step for m in hist) == [1, 2]
    train_hist = client.get_metric_history(run.info.run_id, "train/loss.recon")
    assert sorted(m.step for m in train_hist) == [1, 2]
    for key in ("loss.total", "loss.recon", "loss.kl_c", "loss.usage_balance", "mixture.K_eff", "mixture.active_components",
                "mixture.responsibility_confidence_mean", "mixture.component_entropy", "clustering.acc",
                "training.best_epoch", "training.compile_time_sec"):
        assert key in run.data.metrics, key
    assert "loss.kl_c_logit_mog" not in run.data.metrics and "mixture.pi_entropy" not in run.data.metrics
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "config.input.yaml", "summary.json", "REPORT.md", "REPORT.html", "diagnostics",
            "checkpoints", "figures", "logs"} <= files
    summary = json.loads((Path(client.download_artifacts(run.info.run_id, "summary.json", str(workdir)))).read_text())
    assert summary["status"] == "FINISHED" and summary["summary_split"] == "test"
    assert set(summary["metrics"]) == {k for k in run.data.metrics if "/" not in k}
    assert summary["metrics_status"]["loss.kl_c_logit_mog"]["status"] == "disabled"
    report = workdir / out["report"]
    assert report.exists()
    text = report.read_text()
    for section in ("## Configuration", "## Results", "## Loss curves and stability", "## Reconstructions",
                    "## Mixture routing hardness and specialization", "## Plot status", "## Artifacts"):
        assert section in text
    import matplotlib.image as mpimg
    for line in text.splitlines():
        if line.startswith("![") and "](" in line:
            img = mpimg.imread(report.parent / line.split("](", 1)[1].rstrip(")"))
            assert img.std() > 0.01  # not blank

    # The report is rebuilt from the run alone, later, in another directory.
    again = mixvae(["report", out["run_id"][:10], "--out", str(workdir / "again"), "--no-upload"], env, workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    rebuilt = (workdir / "again" / "REPORT.md").read_text()

    def strip(t):
        return "\n".join(line for line in t.splitlines() if not line.startswith("Generated:"))
    assert strip(rebuilt).replace("again/", "") .count("## ") == strip(text).count("## ")
    assert "| status | FINISHED |" in rebuilt


def test_interrupted_run_is_killed_and_resumes(env, workdir, tracking_uri):
    args = ["train", "-c", "quick", "--set", "model.hidden_dims=[32]", "--set", "training.max_epochs=400",
            "--set", "training.patience=null", "--no-report"]
    proc = subprocess.Popen([sys.executable, "-m", "mixvae", *args], env=env, cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_interrupts)
    seen = interrupt_after(proc, "epoch 3/")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + err[-2000:]
    fields = stdout_fields(out)
    assert fields["status"] == "KILLED"
    run_id = fields["run_id"]
    assert "mixvae train --resume" in err
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert "interrupted" in run.data.tags["mixvae.status_reason"]
    assert "checkpoints" in {a.path for a in client.list_artifacts(run_id)}
    done_epochs = max(m.step for m in client.get_metric_history(run_id, "val/loss.total"))
    assert done_epochs >= 3

    target = done_epochs + 2
    resumed = mixvae(["train", "--resume", run_id, "--set", f"training.max_epochs={target}"], env, workdir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mixvae.resumed_from_epoch"] == str(done_epochs)
    steps = sorted({m.step for m in client.get_metric_history(run_id, "val/loss.total")})
    assert steps == list(range(1, target + 1))

    bad = mixvae(["train", "--resume", run_id, "--set", "model.latent_dim=3"], env, workdir)
    assert bad.returncode == 2 and "model.latent_dim" in bad.stderr


def test_non_finite_loss_marks_the_run_failed(env, workdir, tracking_uri):
    data = workdir / "huge.npz"
    np.savez(data, images=np.full((120, 8, 8), 3e19, np.float32), labels=np.arange(120) % 10)
    proc = mixvae(["train", "-c", "quick", "--set", "data.dataset=npz", "--set", f"data.path={data}",
                   "--set", "model.reconstruction_loss=mse", "--set", "training.batch_size=32", *FAST], env, workdir)
    assert proc.returncode == 1
    fields = stdout_fields(proc.stdout)
    assert fields["status"] == "FAILED"
    run = MlflowClient(tracking_uri).get_run(fields["run_id"])
    assert run.info.status == "FAILED"
    assert "non-finite loss at epoch 1" in run.data.tags["mixvae.status_reason"]
    assert "Traceback" not in proc.stderr
    # A report of the FAILED run still builds and says what is missing.
    report = mixvae(["report", fields["run_id"], "--out", str(workdir / "failed"), "--no-upload"], env, workdir)
    assert report.returncode == 0, report.stderr[-2000:]
    text = (workdir / "failed" / "REPORT.md").read_text()
    assert "| status | FAILED" in text
    assert "run has no diagnostics (status FAILED)" in text


def test_seed_group_then_compare(env, workdir, tracking_uri):
    proc = mixvae(["train", "-c", "quick", *FAST, "--seeds", "0-1", "--no-report"], env, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    ids = [line.split("=", 1)[1] for line in lines if line.startswith("run_id=")]
    assert len(ids) == 2
    group = stdout_fields(proc.stdout)["group_run_id"]
    client = MlflowClient(tracking_uri)
    parent = client.get_run(group)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mixvae.kind"] == "seed_group"
    assert parent.data.metrics["seed_n"] == 2.0
    assert "seed_mean/loss.total" in parent.data.metrics and "seed_std/loss.total" in parent.data.metrics
    children = [client.get_run(i) for i in ids]
    assert [c.data.params["training.seed"] for c in children] == ["0", "1"]
    assert all(c.data.tags.get("mlflow.parentRunId") == group for c in children)
    assert all(c.data.params["data.seed"] == "0" for c in children)
    values = [c.data.metrics["loss.total"] for c in children]
    import statistics
    assert parent.data.metrics["seed_mean/loss.total"] == pytest.approx(statistics.fmean(values))
    group_report = (workdir / stdout_fields(proc.stdout)["report"]).read_text()
    assert "| seed | run id | status | clustering.acc" in group_report          # the per-seed table
    assert f"| 0 | `{ids[0]}` | FINISHED |" in group_report and "| mean ± std |" in group_report

    proc = mixvae(["compare", f"{ids[0]},{ids[1]}", "--out", str(workdir / "cmp")], env, workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = (workdir / "cmp" / "COMPARE.md").read_text()
    assert ids[0] in text and ids[1] in text
    assert "training.seed" in text
    one = mixvae(["compare", ids[0]], env, workdir)
    assert one.returncode == 2 and "at least two runs" in one.stderr
    missing = mixvae(["report", "0123456789abcdef"], env, workdir)
    assert missing.returncode == 2 and "no run matches" in missing.stderr
    listing = mixvae(["runs", "--experiment", os.environ["MLFLOW_EXPERIMENT_NAME"], "--format", "json"], env, workdir)
    assert listing.returncode == 0
    rows = json.loads(listing.stdout)
    assert {r["run_id"] for r in rows} >= set(ids)
    assert group not in {r["run_id"] for r in rows}  # seed groups are not training runs


def test_unreachable_store_exits_1_before_training(subprocess_env, workdir):
    env = dict(subprocess_env, MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    proc = mixvae(["train", "-c", "quick", *FAST], env, workdir, timeout=120)
    assert proc.returncode == 1
    assert "tracking store not reachable" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_workdir_holds_every_output_of_a_run_on_the_default_store(subprocess_env, tmp_path):
    """`--workdir` elsewhere: the default store, its artifacts, the checkpoints and the report all
    land there, and nothing in the directory the command runs from."""
    elsewhere, work = tmp_path / "elsewhere", tmp_path / "work"
    elsewhere.mkdir()
    env = {k: v for k, v in subprocess_env.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MIXVAE_WORKDIR")}
    proc = mixvae(["--workdir", str(work), "train", "-c", "quick", "--set", "model.hidden_dims=[32]",
                   "--set", "training.max_epochs=1", "--set", "tracking.log_model=false"], env, elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = stdout_fields(proc.stdout)["run_id"]
    assert list(elsewhere.iterdir()) == []
    assert (work / "mlflow.db").is_file()
    assert (work / "reports" / run_id / "REPORT.md").is_file()
    assert (work / ".mixvae" / "checkpoints" / run_id).is_dir()
    assert any((work / "mlruns").rglob("config.yaml"))
