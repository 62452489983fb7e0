"""The metric-key declarations: the improvement rule and the generated metric reference."""

from __future__ import annotations

import ast
import math
from pathlib import Path

from mixvae.config import Config
from mixvae.config.applicability import always
from mixvae.metrics.keys import KEYS, disabled_reasons, enabled, improves, markdown


def test_improves_min_needs_more_than_min_delta():
    assert improves(0.5, 1.0, "min", 0.1)
    assert not improves(0.95, 1.0, "min", 0.1)
    assert not improves(0.9, 1.0, "min", 0.1)  # exactly min_delta is not enough
    assert not improves(1.5, 1.0, "min", 0.0)


def test_improves_max_needs_more_than_min_delta():
    assert improves(1.5, 1.0, "max", 0.1)
    assert not improves(1.05, 1.0, "max", 0.1)
    assert not improves(0.5, 1.0, "max", 0.0)


def test_improves_without_best_and_with_nan():
    assert improves(3.0, None, "min", 0.1)
    assert improves(math.nan, None, "max", 0.0)
    assert not improves(math.nan, 1.0, "min", 0.0)
    assert not improves(0.5, math.nan, "min", 0.0)


def test_docs_metrics_md_is_generated_from_the_declarations():
    """docs/metrics.md cannot drift: regenerate it with `python -m mixvae.metrics.keys --markdown`."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
    assert doc.read_text() == markdown(), "regenerate: python -m mixvae.metrics.keys --markdown > docs/metrics.md"


def test_every_declared_key_is_in_docs_with_its_disabled_reasons():
    text = markdown()
    for key in KEYS.values():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{key.name}` |"))
        if key.gate is not always:
            assert not row.endswith("| always logged |"), f"{key.name}: no configuration in the doc disables it"


def test_config_does_not_import_metrics():
    """Data flows one way: mixvae.metrics.keys builds on the config package, never the reverse."""
    package = Path(__file__).resolve().parents[1] / "mixvae" / "config"
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("mixvae.metrics") for n in names), f"{path.name} imports {names}"


def test_loss_terms_follow_their_conditions():
    cfg = Config.model_validate({"model": {"c_regularizer": "logit_mog", "kl_weight": 0}})
    reasons = disabled_reasons(cfg, 0)
    assert reasons["loss.kl_c"] == "model.c_regularizer is 'logit_mog'"
    assert reasons["loss.kl_z"] == "model.kl_weight is 0"
    assert reasons["loss.classifier"] == "data.num_labeled is 0"
    assert "loss.kl_c_logit_mog" not in reasons
    assert "val/loss.kl_c_logit_mog" in [f"val/{k}" for k in enabled(cfg, "val", 0)]
