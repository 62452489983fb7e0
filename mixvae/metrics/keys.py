"""Every canonical metric key: the API training, tracking, the report and compare use.

The keys themselves are declared once, as plain data, in ``mixvae.config.metric_table`` (each with
its family, its direction, where it is logged, its definition and the condition under which it is
logged); this module adds what is asked of them: which keys a configuration logs and why others are
disabled, whether a logged name is declared, a key's direction and when a value improves on the best
one. ``python -m mixvae.metrics.keys --markdown`` writes docs/metrics.md from the declarations.
"""

from __future__ import annotations

import sys

from mixvae.config.metric_table import (ALL, DECLARED, FAMILIES, KEYS, SUMMARY, TRAIN, VAL, MetricKey,
                                        direction, enabled)
from mixvae.config.schema import Config

__all__ = ["ACTIVE_USAGE_THRESHOLD", "ALL", "FAMILIES", "KEYS", "LOSS_TERMS", "NEEDS_LABELS", "SUMMARY", "TRAIN",
           "VAL", "MetricKey", "direction", "disabled_reasons", "enabled", "improves", "is_declared", "markdown"]

# A component counts as used when its mean responsibility exceeds this (mixture.active_components).
ACTIVE_USAGE_THRESHOLD = 0.01

LOSS_TERMS = tuple(k for k in KEYS if k.startswith("loss.") and k not in ("loss.total", "loss.objective"))

# Summary-key families that need labels in the split (skipped otherwise).
NEEDS_LABELS = frozenset({"clustering.nmi", "clustering.ari", "clustering.acc", "mixture.specialization",
                          "tau.accuracy", "tau.calibration_error", "classifier.accuracy"})


def disabled_reasons(cfg: Config, num_labeled: int | None = None) -> dict[str, str]:
    """Every declared key that does not apply, with the reason."""
    out = {}
    for k in DECLARED:
        reason = k.applies(cfg, num_labeled)
        if reason is not None:
            out[k.name] = reason
    return out


def is_declared(logged_key: str) -> bool:
    """True for 'train/<key>', 'val/<key>' or '<key>' with a declared key in the right place."""
    if "/" in logged_key:
        where, name = logged_key.split("/", 1)
        return name in KEYS and where in KEYS[name].where
    return logged_key in KEYS and SUMMARY in KEYS[logged_key].where


def improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` improves on ``best`` by more than ``min_delta`` in the key's direction.

    ``mode`` is 'min' (smaller is better) or 'max' (larger is better; any mode other than 'min' is
    read as 'max', as early stopping always did). With no best yet (``None``)
    every value improves. A NaN value or best never improves (every comparison with NaN is false).
    Early stopping, the curriculum's plateau test and the report's "still improving" diagnosis all
    use this one rule.
    """
    if best is None:
        return True
    if mode == "min":
        return value < best - min_delta
    return value > best + min_delta


# --- docs/metrics.md ---------------------------------------------------------------------------

_INTRO = """\
# Metrics

Every metric mixvae logs, generated from the declarations in `mixvae/config/metric_table.py` by
`python -m mixvae.metrics.keys --markdown > docs/metrics.md` (a test keeps this page equal to it).

**Names.** A metric key is `<family>.<name>`, e.g. `loss.recon` or `clustering.nmi`. Per-epoch values
are logged with the split as a prefix (the step is the epoch, from 1): `train/loss.recon` is the
mean over the epoch's training steps, `val/loss.recon` the value on the whole validation split after
the epoch. Summary values are logged once at the end under the bare key, `loss.recon`: the restored
best epoch on the summary split (the test split, or the validation split when there is no test
split), or a figure of the run as a whole (`training.*`, `curriculum.*`). The *logged as* column
says which of the three forms a key has.

**Disabled metrics.** A metric whose quantity does not exist in a configuration (no τ classifier, no
mixture, a loss term with weight 0) is never logged: not as zero, not as NaN. The run's
`summary.json` records it under `metrics_status` as `disabled` with the reason; the *disabled when*
column lists the reasons a key can have. Metrics computed from labels
({needs_labels}) are `skipped` when the split has no labels.

**Direction.** `min` or `max` says which way is better (early stopping and comparisons use it);
`none` marks a key that describes rather than scores. Symbols: r = responsibilities q(c|x) of the
components, π^A = mixture weights over the active components, τ = the component-to-label map,
σ̂ = the decoder's predicted noise scale.
"""

# Configurations that switch things off, one setting at a time; ``markdown`` lists, for every key,
# the distinct reasons its condition gives across them (the reasons themselves come from the
# conditions in mixvae.config.applicability).
_SWITCHED_OFF: list[tuple[dict, int]] = [
    ({"model": {"prior_type": "standard"}}, 0),
    ({"model": {"prior_type": "vamp"}}, 0),
    ({}, 0),
    ({"model": {"use_tau_classifier": True}}, 100),
    ({"model": {"label_weight": 0}}, 100),
    ({"model": {"kl_weight": 0}}, 100),
    ({"model": {"c_regularizer": "logit_mog"}}, 100),
    ({"model": {"kl_c_weight": 0}}, 100),
    ({"model": {"c_regularizer": "both", "c_logit_prior_weight": 0}}, 100),
]


def _disabled_when(key: MetricKey) -> list[str]:
    reasons: list[str] = []
    for overrides, num_labeled in _SWITCHED_OFF:
        reason = key.applies(Config.model_validate(overrides), num_labeled)
        if reason is not None and reason not in reasons:
            reasons.append(reason)
    return reasons


def _row(key: MetricKey) -> str:
    logged = [f"`{w}/…`" for w in (TRAIN, VAL) if w in key.where] + (["summary"] if SUMMARY in key.where else [])
    when = "; ".join(_disabled_when(key)) or "always logged"
    cells = [f"`{key.name}`", key.definition.replace("|", "\\|"), ", ".join(logged), key.direction,
             when.replace("|", "\\|")]
    return "| " + " | ".join(cells) + " |"


def markdown() -> str:
    """docs/metrics.md: the naming rules, then one table per family of every declared key."""
    needs_labels = ", ".join(f"`{k.name}`" for k in DECLARED if k.name in NEEDS_LABELS)
    parts = [_INTRO.format(needs_labels=needs_labels)]
    for family in FAMILIES:
        keys = [k for k in DECLARED if k.family == family]
        if not keys:
            continue
        parts.append(f"\n## {family}\n\n| key | definition | logged as | direction | disabled when |\n"
                     "|---|---|---|---|---|\n" + "\n".join(_row(k) for k in keys) + "\n")
    return "".join(parts)


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m mixvae.metrics.keys --markdown > docs/metrics.md")
    sys.stdout.write(markdown())
