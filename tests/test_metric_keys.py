"""The metric-key declarations: the improvement rule and the generated metric reference."""

from __future__ import annotations

import math

from mixvae.metrics.keys import improves


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
