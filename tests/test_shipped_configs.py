"""Every shipped config validates with zero warnings, builds abstractly, and trains for one epoch on its
data; mnist_conv uses a small generated IDX directory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fixtures import write_idx_dir
from mixvae.config import load_config
from mixvae.console import Console
from mixvae.data import load_dataset
from mixvae.tracking.writer import MemoryWriter
from mixvae.train.abstract import check
from mixvae.train.loop import Trainer

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
EXPECTED = {"curriculum", "decentralized", "default", "geometric", "mnist_conv", "quick", "tau_semisupervised",
            "vamp"}


def test_every_documented_preset_is_shipped():
    assert EXPECTED <= set(CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_config_trains_one_epoch(name, tmp_path):
    overrides = ["training.max_epochs=1"]
    if name == "mnist_conv":
        write_idx_dir(tmp_path / "mnist")
        overrides.append(f"data.path={tmp_path / 'mnist'}")
    if name == "mnist5k":  # its t-SNE warm start (12 s) runs here on decentralized, and in test_model_math
        overrides.append("model.cluster_init=none")
    loaded = load_config(name, overrides)
    assert loaded.warnings == []
    ds = load_dataset(loaded.config)
    check(loaded.config, ds.image_shape, ds.n_labeled, ds.n_train)
    writer = MemoryWriter(artifact_root=tmp_path / "artifacts")
    trainer = Trainer(loaded, ds, writer, Console(quiet=True), run_dir=tmp_path / "run")
    trainer.compile()
    result = trainer.run()
    assert result.status == "FINISHED", result.reason
    assert list(writer.epochs) == [1]
    assert all(math.isfinite(v) for v in writer.epochs[1].values())
    assert math.isfinite(result.summary_metrics["loss.total"])
    assert (tmp_path / "run" / "diagnostics" / "eval.npz").exists()
