"""Hard kills: a run records the host and process that own it and a heartbeat; `--resume` of a RUNNING
run whose process is provably gone needs no --force, `mixvae runs` shows it stale, and the resumed run
ends with every epoch in its history exactly once and the summary of an uninterrupted run.

The first tests are fast (real processes, no store); the last one kills a real training with SIGKILL
against the session's `mlflow server`."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from mixvae.tracking.ownership import (HEARTBEAT, OWNER_BOOT, OWNER_HOST, OWNER_PID, OWNER_STARTED, OwnedWriter,
                                       may_take_over, owner_state, owner_tags)
from mixvae.tracking.writer import MemoryWriter


def _tags_of(pid: int, host: str | None = None, started: float | None = None,
             boot: float | None = None) -> dict[str, str]:
    started = psutil.Process(pid).create_time() if started is None else started
    boot = psutil.boot_time() if boot is None else boot
    return {OWNER_HOST: host or socket.gethostname(), OWNER_BOOT: f"{boot:.0f}", OWNER_PID: str(pid),
            OWNER_STARTED: f"{started:.3f}", HEARTBEAT: "2026-01-01T10:00:00Z"}


def test_this_process_owns_what_it_opens():
    tags = owner_tags()
    assert tags[OWNER_HOST] == socket.gethostname() and tags[OWNER_PID] == str(os.getpid())
    assert abs(float(tags[OWNER_STARTED]) - psutil.Process().create_time()) < 0.01
    assert owner_state(tags) == "alive"
    allowed, why = may_take_over("r1", tags)
    assert not allowed and f"pid {os.getpid()} on host {socket.gethostname()}" in why and "--force" in why


def test_a_killed_owner_is_gone_and_a_reused_pid_is_not_the_owner():
    child = subprocess.Popen(["sleep", "60"])
    try:
        tags = _tags_of(child.pid)
        assert owner_state(tags) == "alive"
        child.kill()
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert owner_state(tags) == "gone"  # not yet reaped: a zombie trains nothing
    finally:
        child.wait()
    assert owner_state(tags) == "gone"
    allowed, why = may_take_over("r2", tags)
    assert allowed and "process is gone" in why and f"pid {child.pid}" in why
    # a live process with the owner's id but another start time is somebody else
    reused = _tags_of(os.getpid(), started=psutil.Process().create_time() - 3600)
    assert owner_state(reused) == "gone"


def test_other_hosts_and_unknown_owners_need_force():
    tags = _tags_of(os.getpid(), host="gpu-node-7.example")
    assert owner_state(tags) == "remote"
    allowed, why = may_take_over("r3", tags)
    assert not allowed and "another host" in why and "gpu-node-7.example" in why
    assert "last heartbeat 2026-01-01T10:00:00Z (" in why and "--force" in why
    # this host's name, but booted since: the owner may be a namesake machine's process, so no proof
    rebooted = _tags_of(os.getpid(), boot=psutil.boot_time() - 86400)
    assert owner_state(rebooted) == "remote"
    allowed, why = may_take_over("r5", rebooted)
    assert not allowed and "this host before its last restart" in why and "--force" in why
    allowed, why = may_take_over("r4", {"mixvae.kind": "train"})
    assert not allowed and owner_state({}) == "unknown" and "records no owner" in why


def test_owned_writer_beats_and_leaves_out_epochs_the_run_holds():
    inner = MemoryWriter()
    writer = OwnedWriter(inner, skip_epochs={4, 5}, every_s=3600)
    for epoch in range(1, 7):
        writer.log_epoch(epoch, {"val/loss.total": float(epoch)})
    assert [step for step, _ in inner.epoch_calls] == [1, 2, 3, 6]
    assert HEARTBEAT not in inner.tags  # throttled: no beat within the hour
    assert writer.resume_note(3) == ("; epochs 4–5 were logged before the process died: trained again, "
                                     "not logged again")
    assert writer.resume_note(5) == ""
    beating = OwnedWriter(inner, every_s=0)
    beating.log_epoch(7, {"val/loss.total": 7.0})
    assert inner.tags[HEARTBEAT].endswith("Z") and inner.epochs[7] == {"val/loss.total": 7.0}
    beating.set_tags({"a.b": "c"})  # every other call goes to the run's writer
    assert beating.run_id == inner.run_id and inner.tags["a.b"] == "c"
    assert beating.set_status("FINISHED") and inner.status == "FINISHED"


# ---------------------------------------------------------------------------------------------
# A real training, killed outright

TIMING_KEYS = {"training.time_sec", "training.compile_time_sec", "training.steps_per_sec", "training.peak_rss_mb"}
EPOCHS, EVERY = 12, 4
ARGS = ["-c", "quick", "--set", "model.hidden_dims=[32]", "--set", f"training.max_epochs={EPOCHS}",
        "--set", "training.patience=null", "--set", f"training.checkpoint_every={EVERY}",
        "--set", "training.batch_size=8", "--set", "tracking.log_model=false", "--no-report"]


def _mixvae(args, env, cwd, **kw):
    return subprocess.run([sys.executable, "-m", "mixvae", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kw)


def _steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "val/loss.total"))


def _listed(env, cwd, experiment: str, run_id: str) -> str:
    """The run's line in `mixvae runs`."""
    listed = _mixvae(["runs", "--experiment", experiment], env, cwd)
    assert listed.returncode == 0, listed.stderr[-2000:]
    return next(line for line in listed.stdout.splitlines() if line.startswith(run_id))


def _stop_after_a_checkpoint(proc, client) -> str:
    """Read the training's epoch lines; stop it (SIGSTOP) between two checkpoints once the store holds
    one, with epochs logged after it. → the run id."""
    run_id = None
    for line in proc.stderr:
        if line.startswith("  run "):
            run_id = line.split()[1]
        if not line.startswith("epoch "):
            continue
        epoch = int(line.split()[1].split("/")[0])
        if epoch > EVERY and epoch % EVERY in (1, 2, 3):
            os.kill(proc.pid, signal.SIGSTOP)
            held = {a.path for a in client.list_artifacts(run_id, "checkpoints/last")}
            if {"checkpoints/last/state.msgpack", "checkpoints/last/meta.json"} <= held:
                return run_id
            os.kill(proc.pid, signal.SIGCONT)
    raise AssertionError(f"the training ended before it could be stopped (exit {proc.wait()})")


@pytest.mark.slow
@pytest.mark.server
def test_kill_9_then_resume_finishes_with_the_uninterrupted_history(tracking_uri, experiment_name,
                                                                     subprocess_env, hermetic_work_dir):
    from mlflow import MlflowClient

    env, cwd, client = subprocess_env, hermetic_work_dir, MlflowClient(tracking_uri)
    reference = _mixvae(["train", *ARGS], env, cwd)
    assert reference.returncode == 0, reference.stderr[-3000:]
    reference_id = dict(line.split("=", 1) for line in reference.stdout.splitlines())["run_id"]

    proc = subprocess.Popen([sys.executable, "-m", "mixvae", "train", *ARGS], env=env, cwd=cwd, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        run_id = _stop_after_a_checkpoint(proc, client)
        tags = client.get_run(run_id).data.tags
        assert (tags["mixvae.owner.host"], tags["mixvae.owner.pid"]) == (socket.gethostname(), str(proc.pid))
        # stopped, not dead: still its owner's, so --resume refuses and the listing says RUNNING
        line = _listed(env, cwd, experiment_name, run_id)
        assert " RUNNING " in line and "stale" not in line, line
        refused = _mixvae(["train", "--resume", run_id], env, cwd)
        assert refused.returncode == 2 and f"still trained by pid {proc.pid}" in refused.stderr, refused.stderr
        assert "last heartbeat" in refused.stderr
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert client.get_run(run_id).info.status == "RUNNING"
    before = _steps(client, run_id)
    assert " RUNNING (stale: owner gone) " in _listed(env, cwd, experiment_name, run_id)

    resumed = _mixvae(["train", "--resume", run_id], env, cwd)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "its process is gone" in resumed.stderr and "Traceback" not in resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mixvae.owner.pid"] != str(proc.pid)  # the resuming process took it over
    from_epoch = int(run.data.tags["mixvae.resumed_from_epoch"])
    assert from_epoch % EVERY == 0 and from_epoch < EPOCHS
    if before and before[-1] > from_epoch:
        assert "trained again, not logged again" in resumed.stderr
    assert _steps(client, run_id) == list(range(1, EPOCHS + 1))  # each epoch once: no duplicate, no gap
    mine = {m.step: m.value for m in client.get_metric_history(run_id, "val/loss.total")}
    theirs = {m.step: m.value for m in client.get_metric_history(reference_id, "val/loss.total")}
    assert all(math.isclose(mine[e], theirs[e], rel_tol=1e-6) for e in theirs), (mine, theirs)
    summary = {k: v for k, v in run.data.metrics.items() if "/" not in k and k not in TIMING_KEYS}
    expected = {k: v for k, v in client.get_run(reference_id).data.metrics.items()
                if "/" not in k and k not in TIMING_KEYS}
    assert set(summary) == set(expected) and len(summary) > 10
    different = {k: (summary[k], expected[k]) for k in expected
                 if not math.isclose(summary[k], expected[k], rel_tol=1e-6, abs_tol=1e-12)}
    assert not different, different
