"""A regression to mixture collapse fails CI: the `make run` demo preset must cluster the digits.

Trains configs/quick.yaml (shortened to fit about 20 s) without MLflow and checks, on the test split,
that the mixture assigns the digits far better than chance and that its reconstructions beat the
per-pixel mean image. These are the failures the old objective showed: one component for every digit
(clustering.acc 0.10) and a latent that carries nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from mixvae.config import load_config
from mixvae.console import Console
from mixvae.data import load_dataset
from mixvae.tracking.writer import MemoryWriter
from mixvae.train.loop import Trainer

EPOCHS = 30


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    loaded = load_config("quick", [f"training.max_epochs={EPOCHS}", "training.seed=0"])
    ds = load_dataset(loaded.config)
    trainer = Trainer(loaded, ds, MemoryWriter(artifact_root=tmp / "artifacts"), Console(quiet=True),
                      run_dir=tmp / "run")
    trainer.compile()
    return trainer.run(), ds


def mean_image_bernoulli_nll(train_x: np.ndarray, test_x: np.ndarray) -> float:
    """Per-image Bernoulli NLL of the test images under the training split's per-pixel mean image."""
    p = np.clip(train_x.mean(axis=0), 1e-6, 1 - 1e-6)
    nll = -(test_x * np.log(p) + (1 - test_x) * np.log(1 - p))
    return float(nll.reshape(len(test_x), -1).sum(axis=1).mean())


@pytest.mark.slow
def test_quick_preset_clusters_the_digits(quick_result):
    result, _ = quick_result
    m = result.summary_metrics
    assert result.status == "FINISHED"
    assert m["clustering.acc"] >= 0.5, f"mixture collapse: clustering.acc = {m['clustering.acc']:.3f} (chance 0.1)"
    assert m["mixture.K_eff"] >= 5, f"usage collapsed onto few components: K_eff = {m['mixture.K_eff']:.2f}"
    assert m["mixture.active_components"] == 10
    assert m["latent.active_units"] >= 1, "posterior collapse: the latents carry no information"


@pytest.mark.slow
def test_quick_reconstructions_beat_the_mean_image(quick_result):
    result, ds = quick_result
    baseline = mean_image_bernoulli_nll(ds.train_x, ds.test_x)
    recon = result.summary_metrics["loss.recon"]
    assert recon < 0.8 * baseline, f"loss.recon {recon:.2f} is not well below the mean image's {baseline:.2f}"
