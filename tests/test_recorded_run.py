"""Refactoring does not change behaviour: fixed configs and seeds reproduce a recorded run.

`tests/data/recorded_runs.json` holds every per-epoch metric (timings excepted) and the summary
metrics of short runs of several presets, recorded before the package was reorganised. A change that
alters what training computes fails here. To re-record after an intended change of behaviour, run
`MIXVAE_RECORD=1 .venv/bin/python -m pytest tests/test_recorded_run.py` and say why in the commit.

Values are compared to a relative 1e-5: identical on the machine that recorded them, and tolerant of
the last-bit differences another CPU's vector code can give.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from mixvae.config import load_config
from mixvae.console import Console
from mixvae.data import load_dataset
from mixvae.tracking.writer import MemoryWriter
from mixvae.train.loop import Trainer

RECORD = Path(__file__).parent / "data" / "recorded_runs.json"
SMALL = ["model.hidden_dims=[32]", "model.component_embedding_dim=4", "training.batch_size=64",
         "training.max_epochs=3", "training.patience=null"]
CASES = {
    "quick": ["model.num_components=4"],
    "tau_semisupervised": ["model.num_components=12", "model.cluster_init_epochs=2"],
    "curriculum": ["model.num_components=4", "curriculum.unlock.patience=1"],
    "vamp": ["model.num_components=4"],
    "geometric": ["model.num_components=4"],
}
TIMING = ("epoch_time_sec", "steps_per_sec", "time_sec", "compile_time_sec", "peak_rss_mb")


def _untimed(metrics: dict) -> dict:
    return {k: float(v) for k, v in sorted(metrics.items()) if k.split("/")[-1].split(".")[-1] not in TIMING
            and not k.split("/")[-1].endswith(TIMING)}


def _run(tmp_path: Path, preset: str) -> dict:
    loaded = load_config(preset, SMALL + CASES[preset])
    ds = load_dataset(loaded.config)
    writer = MemoryWriter(artifact_root=tmp_path / f"{preset}-artifacts")
    trainer = Trainer(loaded, ds, writer, Console(quiet=True), run_dir=tmp_path / preset)
    trainer.compile()
    result = trainer.run()
    return {
        "status": result.status,
        "epochs": {str(step): _untimed(m) for step, m in sorted(writer.epochs.items())},
        "summary": _untimed(result.summary_metrics),
    }


@pytest.mark.parametrize("preset", sorted(CASES))
def test_fixed_config_and_seed_reproduce_the_recorded_run(tmp_path, preset):
    got = _run(tmp_path, preset)
    if os.environ.get("MIXVAE_RECORD") == "1":
        recorded = json.loads(RECORD.read_text()) if RECORD.exists() else {}
        recorded[preset] = got
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        pytest.skip("recorded")
    want = json.loads(RECORD.read_text())[preset]
    assert got["status"] == want["status"]
    assert list(got["epochs"]) == list(want["epochs"])
    for step, metrics in want["epochs"].items():
        assert sorted(got["epochs"][step]) == sorted(metrics), f"epoch {step}: keys differ"
        for key, value in metrics.items():
            assert _close(got["epochs"][step][key], value), f"epoch {step} {key}: {got['epochs'][step][key]} != {value}"
    assert sorted(got["summary"]) == sorted(want["summary"])
    for key, value in want["summary"].items():
        assert _close(got["summary"][key], value), f"summary {key}: {got['summary'][key]} != {value}"


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)
