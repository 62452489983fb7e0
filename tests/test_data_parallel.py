"""Data-parallel training (`training.devices`): what validation refuses, and that one and two devices
train the same run.

The two-device cases run in subprocesses on the CPU, made to show two devices with
`XLA_FLAGS=--xla_force_host_platform_device_count=2` (JAX reads the flag once, at start-up).

Tolerance of the equivalence: splitting a batch changes only the order of float sums. At quick.yaml's
learning rate (0.002) the training itself magnifies such last-bit differences — a change of the
learning rate by one part in a million moves epoch-3 metrics by 10 % on a single device — so the runs
compared here use learning rate 1e-4, where one and two devices agree to within 1e-5 relative
(measured on a 2-core CPU: at most 2.4e-6 for the dense model over three epochs, 1.1e-5 for a loss
term of 0.005 in the conv model). A gradient that averaged only half of each batch moved
`train/loss.total` by 2e-3 after one epoch, so rtol 1e-4 keeps a wide margin on both sides.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mixvae.cli import main
from mixvae.config import ConfigError, config_hash, load_config

REPO = Path(__file__).resolve().parents[1]
RTOL, ATOL = 1e-4, 1e-7
TIMING = ("time_sec", "steps_per_sec", "peak_rss_mb")


def _env(devices: int | None) -> dict[str, str]:
    """A subprocess environment on the CPU with `devices` host devices (None: JAX's default, one)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _validate(*overrides: str, devices: int | None = None) -> subprocess.CompletedProcess:
    args = [a for o in overrides for a in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "mixvae", "validate", "quick", *args], env=_env(devices),
                          capture_output=True, text=True, timeout=120)


# --- the key and its validation ----------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [("0", "0"), ("1.5", "1.5"), ("true", "true"), ("all", "'all'")])
def test_devices_is_auto_or_a_positive_integer(value, shown):
    with pytest.raises(ConfigError) as err:
        load_config("quick", [f"training.devices={value}"])
    assert err.value.problems == [f"training.devices: must be 'auto' or an integer ≥ 1 (got {shown})"]


def test_the_default_is_one_device_and_the_hash_ignores_the_count():
    one = load_config("quick").config
    assert one.training.devices == 1
    assert load_config("quick", ["training.devices=auto"]).config.training.devices == "auto"
    changed = one.model_copy(deep=True)
    changed.training.devices = 2
    assert config_hash(changed) == config_hash(one)
    assert config_hash(changed, with_seed=False) == config_hash(one, with_seed=False)


def test_a_batch_that_does_not_split_over_the_devices_is_listed_with_the_other_problems(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    result = CliRunner().invoke(main, ["validate", "quick", "--set", "training.devices=3",
                                       "--set", "model.top_m_gating=20"])
    assert result.exit_code == 2
    err = result.stderr
    assert "model.top_m_gating: M must be ≤ K (M = 20, K = 10)" in err
    assert ("training.batch_size: 32 images do not split evenly over training.devices = 3; "
            "use a multiple of 3 (e.g. 30 or 33)") in err
    assert "training.eval_batch_size: 512 images do not split evenly over training.devices = 3" in err
    assert "Traceback" not in err


def test_more_devices_than_the_host_has_exits_2_with_the_other_problems():
    proc = _validate("training.devices=4", "model.top_m_gating=20")
    assert proc.returncode == 2, proc.stderr
    lines = [line.strip() for line in proc.stderr.splitlines()]
    assert lines[0].endswith("quick.yaml: 2 problems")
    assert "model.top_m_gating: M must be ≤ K (M = 20, K = 10)" in lines
    assert ("training.devices: 4 devices asked for, but this host has 1 (cpu); use at most 1, or 'auto' "
            "for all of them") in lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_auto_checks_the_batches_against_every_local_device():
    proc = _validate("training.devices=auto", "training.eval_batch_size=96", devices=3)
    assert proc.returncode == 2, proc.stderr
    assert ("training.batch_size: 32 images do not split evenly over training.devices 'auto' = 3 cpu "
            "device(s); use a multiple of 3 (e.g. 30 or 33)") in proc.stderr
    assert "eval_batch_size" not in proc.stderr  # 96 = 3 × 32
    assert "Traceback" not in proc.stderr


# --- one device and two train the same run ----------------------------------------------------------

TRAIN_SCRIPT = r'''
import json, sys
from pathlib import Path
import jax
from mixvae.config import load_config
from mixvae.console import Console
from mixvae.data import load_dataset
from mixvae.tracking.writer import MemoryWriter
from mixvae.train.loop import Trainer

assert jax.local_device_count() == 2, jax.devices()
tmp = Path(sys.argv[1])
CASES = {
    "dense": ["training.max_epochs=3"],
    # conv on the CPU: the host-driven epoch; 96 training images in batches of 32 → 3 steps, the last padded
    "conv": ["model.encoder_type=conv", "model.decoder_type=conv", "model.conv_channels=[4,8]",
             "model.hidden_dims=[16]", "model.num_components=4", "data.num_samples=120",
             "training.drop_remainder=false", "training.max_epochs=1"],
}
COMMON = ["training.learning_rate=0.0001", "training.patience=null"]


def trainer(name, overrides, devices, max_epochs=None):
    extra = [f"training.devices={devices}"] + ([f"training.max_epochs={max_epochs}"] if max_epochs else [])
    loaded = load_config("quick", COMMON + overrides + extra)
    writer = MemoryWriter(artifact_root=tmp / f"{name}-{devices}-{max_epochs}-artifacts")
    t = Trainer(loaded, load_dataset(loaded.config), writer, Console(quiet=True),
                run_dir=tmp / f"{name}-{devices}-{max_epochs}")
    return t, writer


out = {}
for name, overrides in CASES.items():
    for devices in (1, 2):
        t, writer = trainer(name, overrides, devices)
        t.compile()
        result = t.run()
        params = jax.tree_util.tree_leaves(t.state.params)
        out[f"{name}/{devices}"] = {
            "status": result.status, "host_loop": t.fns.host_loop, "steps": t.fns.steps,
            "epochs": {str(k): v for k, v in writer.epochs.items()}, "summary": result.summary_metrics,
            "tag": writer.tags.get("mixvae.devices"), "chunk": t.chunk,
            "param_devices": sorted({len(p.sharding.device_set) for p in params}),
            "replicated": all(p.sharding.is_fully_replicated for p in params),
            "all_reduce": "all-reduce" in t.compiled["epoch"].as_text(),
        }
# resumed on two devices from the checkpoint of epoch 1: the restored state is placed on both
first, _ = trainer("resume", CASES["dense"], 2, max_epochs=1)
first.compile()
first.run()
t, writer = trainer("resume", CASES["dense"], 2)
t.restore_last(first.ckpt_dir / "last")
t.compile()
result = t.run()
out["resumed/2"] = {"status": result.status, "epochs": {str(k): v for k, v in writer.epochs.items()}}
print(json.dumps(out))
'''


def _compare(a: dict[str, float], b: dict[str, float], where: str) -> list[str]:
    """Every untimed metric of `a` that `b` lacks or differs from beyond the tolerance."""
    bad = []
    for key, value in a.items():
        if key.endswith(TIMING):
            continue
        other = b.get(key)
        if other is None or not math.isclose(value, other, rel_tol=RTOL, abs_tol=ATOL):
            bad.append(f"{where} {key}: {value} vs {other}")
    return bad


def _train_both(tmp: Path) -> dict:
    """TRAIN_SCRIPT's result, or {"error": why} with the subprocess's last words."""
    try:
        proc = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(tmp)], env=_env(2), cwd=tmp,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            return {"error": proc.stderr[-3000:]}
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as exc:  # a timeout, unreadable output
        return {"error": f"{type(exc).__name__}: {exc}"}


@pytest.mark.slow
def test_one_and_two_devices_train_the_same_run_and_a_resumed_one_continues_it(tmp_path):
    """TRAIN_SCRIPT's trainings (~60 s), checked in one test. As separate tests sharing the trainings,
    one xdist worker sat waiting for the other's subprocess (``xdist_group`` does not group tests
    under pytest 9 and xdist 3.8: xdist renames ``item._nodeid``, which pytest 9 no longer reads)."""
    trained = _train_both(tmp_path)
    assert "error" not in trained, trained.get("error")

    # one device and two give the same metrics, epoch by epoch and in the summary
    for case, epochs in (("dense", 3), ("conv", 1)):
        one, two = trained[f"{case}/1"], trained[f"{case}/2"]
        assert one["status"] == two["status"] == "FINISHED"
        assert one["host_loop"] == two["host_loop"] == (case == "conv")
        assert sorted(one["epochs"]) == sorted(two["epochs"]) == [str(n) for n in range(1, epochs + 1)]
        bad = []
        for step, metrics in one["epochs"].items():
            bad += _compare(metrics, two["epochs"][step], f"{case} epoch {step}")
        bad += _compare(one["summary"], two["summary"], f"{case} summary")
        assert not bad, "\n".join(bad)

        # two devices split the batch and replicate the state
        assert (one["tag"], two["tag"]) == ("1", "2")
        assert one["param_devices"] == [1] and two["param_devices"] == [2]
        assert two["replicated"]
        assert not one["all_reduce"] and two["all_reduce"]  # the compiler reduces across the two halves
        assert two["chunk"] % 2 == 0

    # a run resumed on two devices from the checkpoint of epoch 1 continues the uninterrupted one
    resumed, whole = trained["resumed/2"], trained["dense/1"]
    assert resumed["status"] == "FINISHED"
    assert sorted(resumed["epochs"]) == ["2", "3"]
    bad = []
    for step, metrics in resumed["epochs"].items():
        bad += _compare(whole["epochs"][step], metrics, f"resumed epoch {step}")
    assert not bad, "\n".join(bad)
