"""A training job of several processes (`mixvae.processes`, `mixvae.job`): two `mixvae train` processes
on this machine's CPU, one device each, joined through `jax.distributed.initialize` on a localhost port,
train one MLflow run — the same run, metric for metric, as one process on two devices.

What the environment says is checked without joining: validation never starts JAX's backend (after
that, the train path could no longer join) and never waits for another process.

Tolerance: the equivalence runs at learning rate 1e-4, as in tests/test_data_parallel.py, where float
sums in another order cannot grow into visible differences; measured on a 2-core CPU, the job and one
process on two devices logged bit-identical metrics, so rtol 1e-4 leaves a wide margin.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

from mixvae import processes
from mixvae.processes import ENV_ADDRESS, ENV_COUNT, ENV_ID, JobError

RTOL, ATOL = 1e-4, 1e-7
TIMING = ("time_sec", "steps_per_sec", "peak_rss_mb")
JOB_ENV = (ENV_ADDRESS, ENV_COUNT, ENV_ID, "XLA_FLAGS", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
           "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")
SMALL = ["training.max_epochs=2", "model.hidden_dims=[32]", "training.learning_rate=0.0001",
         "training.patience=null"]


def _env(base: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in JOB_ENV}
    env.update(extra)
    return env


def _job(port: int, index: int, count: int = 2) -> dict[str, str]:
    return {ENV_ADDRESS: f"127.0.0.1:{port}", ENV_COUNT: str(count), ENV_ID: str(index)}


def _sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


# --- what the environment says ------------------------------------------------------------------------


def test_no_variables_no_job_and_one_process_is_no_job():
    assert processes.from_env({}) is None
    assert processes.from_env({ENV_ADDRESS: "10.0.0.1:1234"}) is None  # JAX's variable alone joins nothing
    assert processes.from_env({**_job(1234, 0, count=1)}) is None
    job = processes.from_env(_job(1234, 1))
    assert (job.address, job.count, job.index, job.leader) == ("127.0.0.1:1234", 2, 1, False)
    assert processes.from_env(_job(1234, 0)).leader


@pytest.mark.parametrize("environ, message", [
    ({ENV_COUNT: "2", ENV_ID: "0"}, f"{ENV_ADDRESS} is not set"),
    ({ENV_COUNT: "2", ENV_ADDRESS: "h:1"}, f"{ENV_ID} is not set"),
    ({ENV_ID: "0"}, f"{ENV_COUNT}, {ENV_ADDRESS} are not set"),
    ({ENV_COUNT: "two", ENV_ID: "0", ENV_ADDRESS: "h:1"}, f"{ENV_COUNT} must be an integer (got 'two')"),
    ({ENV_COUNT: "2", ENV_ID: "2", ENV_ADDRESS: "h:1"}, f"{ENV_ID} must be 0 … 1 for {ENV_COUNT}=2 (got 2)"),
    ({ENV_COUNT: "0", ENV_ID: "0", ENV_ADDRESS: "h:1"}, f"{ENV_COUNT} must be ≥ 1 (got 0)"),
    ({ENV_COUNT: "2", ENV_ID: "0", ENV_ADDRESS: "h"}, f"{ENV_ADDRESS} must be host:port (got 'h')"),
])
def test_an_incomplete_or_inconsistent_job_is_refused(environ, message):
    with pytest.raises(JobError) as err:
        processes.from_env(environ)
    assert message in str(err.value)
    assert processes.problems(environ) == [str(err.value)]


VALIDATE_SCRIPT = r'''
import sys
from jax._src import xla_bridge
from mixvae.cli import main
try:
    main(sys.argv[1:], standalone_mode=False)
except SystemExit as exc:
    print("exit", exc.code)
print("backend started:", xla_bridge.backends_are_initialized())
'''


def _validate_in_job(subprocess_env, *overrides: str, job=None) -> subprocess.CompletedProcess:
    """`mixvae validate quick` as process 1 of a job whose process 0 never starts: joining would wait."""
    env = _env(subprocess_env, **(job or _job(free_port(), 1)))
    return subprocess.run([sys.executable, "-c", VALIDATE_SCRIPT, "validate", "quick", *_sets(*overrides)],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides", [
    ["training.devices=auto"],
    ["training.devices=4", "training.batch_size=32"],
    # conv models decide at compile time whether the host drives the epoch; asking the backend earlier
    # would start it
    ["training.devices=auto", "model.encoder_type=conv", "model.decoder_type=conv", "model.conv_channels=[4,8]"],
])
def test_validation_in_a_job_neither_joins_nor_starts_the_backend(subprocess_env, overrides):
    proc = _validate_in_job(subprocess_env, *overrides)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "backend started: False"
    assert "OK " in proc.stderr


def test_validation_in_a_job_refuses_a_count_the_processes_cannot_share(subprocess_env):
    proc = _validate_in_job(subprocess_env, "training.devices=1")
    assert "exit 2" in proc.stdout, proc.stderr[-2000:]
    assert ("training.devices: 1 device(s) cannot be shared by the 2 processes of this job "
            f"({ENV_COUNT}); use 'auto' or a multiple of 2") in proc.stderr
    bad = _validate_in_job(subprocess_env, "training.devices=auto", job={ENV_COUNT: "2", ENV_ID: "5"})
    assert "exit 2" in bad.stdout, bad.stderr[-2000:]
    assert (f"environment: a job of several processes needs {ENV_COUNT}, {ENV_ID} and {ENV_ADDRESS}; "
            f"{ENV_ADDRESS} is not set") in bad.stderr
    assert "backend started: False" in bad.stdout and "Traceback" not in bad.stderr


def test_seeds_are_refused_in_a_job_before_it_is_joined(subprocess_env, local_store):
    env = _env(subprocess_env, **_job(free_port(), 0))
    proc = subprocess.run([sys.executable, "-m", "mixvae", "train", "-c", "quick", "--seeds", "0,1",
                           *_sets("training.devices=auto")], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--seeds trains in a single process; unset {ENV_COUNT} for it" in proc.stderr
    from mlflow import MlflowClient
    client = MlflowClient(local_store)  # refused before the seed group's parent run existed
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    space = Path("space.yaml")
    space.write_text("model.kl_c_weight: {type: float, low: 0.1, high: 1.0}\n")
    proc = subprocess.run([sys.executable, "-m", "mixvae", "sweep", "quick", "--space", str(space)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"a sweep trains in a single process; unset {ENV_COUNT}" in proc.stderr


# --- two processes train one run ------------------------------------------------------------------------


def _metrics(client, run) -> dict[tuple[int, str], float]:
    out = {}
    for key in run.data.metrics:
        if not key.endswith(TIMING):
            out.update({(m.step, key): m.value for m in client.get_metric_history(run.info.run_id, key)})
    return out


@pytest.mark.slow
def test_two_processes_train_one_run_like_one_process_on_two_devices(subprocess_env, local_store, tmp_path):
    from mlflow import MlflowClient

    scratch = tmp_path / "tmp"  # where the second process keeps its scratch directory
    scratch.mkdir()
    port = free_port()
    command = [sys.executable, "-m", "mixvae", "train", "-c", "quick", *_sets(*SMALL)]
    job = [subprocess.Popen(command + _sets("training.devices=auto"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(subprocess_env, TMPDIR=str(scratch), **_job(port, i)))
           for i in (0, 1)]
    try:
        reference = subprocess.run(
            command + _sets("training.devices=2", "tracking.experiment_name=reference", "tracking.log_model=false",
                            "tracking.report=false"),
            env=_env(subprocess_env, XLA_FLAGS="--xla_force_host_platform_device_count=2"), capture_output=True,
            text=True, timeout=240)
        outputs = [p.communicate(timeout=240) for p in job]
    finally:  # a process left waiting for the other one
        for p in job:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(job, outputs):
        assert p.returncode == 0, err[-3000:]
    assert reference.returncode == 0, reference.stderr[-3000:]
    lines = [dict(line.split("=", 1) for line in out.splitlines() if "=" in line) for out, _ in outputs]
    assert lines[0]["run_id"] == lines[1]["run_id"] and lines[0]["status"] == lines[1]["status"] == "FINISHED"
    # process 0 logs the model and the report; process 1 computes beside it and prints only errors
    assert "model_uri" in lines[0] and "report" in lines[0]
    assert "model_uri" not in lines[1] and "report" not in lines[1]
    assert "epoch 2/2" in outputs[0][1] and "· train ·" in outputs[0][1]
    assert "epoch" not in outputs[1][1] and "· train ·" not in outputs[1][1]

    client = MlflowClient(local_store)
    default = client.get_experiment_by_name("mixvae")
    runs = client.search_runs([default.experiment_id])
    assert [r.info.run_id for r in runs] == [lines[0]["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mixvae.devices"] == "2" and run.data.tags["mixvae.processes"] == "2"
    assert run.data.tags["mixvae.model_status"] == run.data.tags["mixvae.report_status"] == "ok"
    (ref,) = client.search_runs([client.get_experiment_by_name("reference").experiment_id])
    assert ref.data.tags["mixvae.devices"] == "2" and ref.data.tags["mixvae.processes"] == "1"

    ours, theirs = _metrics(client, run), _metrics(client, ref)
    assert {step for step, _ in ours} == {0, 1, 2}  # two epochs and the summary
    assert ours.keys() == theirs.keys()
    bad = [f"{k}: {ours[k]} vs {theirs[k]}" for k in ours
           if not math.isclose(ours[k], theirs[k], rel_tol=RTOL, abs_tol=ATOL)]
    assert not bad, "\n".join(bad)
    # one checkpoints directory (process 0's); the second process's scratch directory is gone
    assert sorted(p.name for p in (Path(tmp_path) / ".mixvae" / "checkpoints").iterdir()) == sorted(
        [run.info.run_id, ref.info.run_id])
    assert list(scratch.iterdir()) == []
