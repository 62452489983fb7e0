"""Which image goes where: the pool (all images or a num_samples subset), the test / validation /
training split of the pool (stratified by label through scikit-learn's `train_test_split`), the
labeled subset of the training split, and the digest that fingerprints a split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np


class CannotStratify(Exception):
    """The labels cannot be split with every label on both sides; the message says why."""


@dataclass
class Splits:
    """Where each split comes from: positions in the pool, and the pool's place in the source."""

    pool_index: np.ndarray  # source positions of the pool (sorted)
    train: np.ndarray  # pool positions
    val: np.ndarray
    test: np.ndarray  # pool positions (empty when the test split is official)


def draw_pool(n_source: int, num_samples: int | None, seed: int) -> np.ndarray:
    """All source images, or a sorted random subset of num_samples."""
    if num_samples is None or int(num_samples) >= n_source:
        return np.arange(n_source)
    rng = np.random.default_rng((seed, 1))
    return np.sort(rng.choice(n_source, size=int(num_samples), replace=False))


def split_pool(
    data: Any,
    pool_index: np.ndarray,
    pool_labels: np.ndarray | None,
    has_labels: bool,
    test_source: str,
    problems: list[str],
    warnings: list[str],
) -> Splits:
    """n_test = round(test_fraction·|pool|) (pool test only), n_val = round(val_fraction·|pool|)
    (at least 1), the rest trains."""
    n_pool = len(pool_index)
    n_test = round(float(data.test_fraction) * n_pool) if test_source == "pool" else 0
    n_val = max(1, round(float(data.val_fraction) * n_pool))
    empty = np.arange(0)
    if n_pool - n_test - n_val < 1:
        problems.append(
            f"data: a pool of {n_pool} images leaves no training images after "
            f"{n_test} test and {n_val} validation images; use more data (data.num_samples)"
        )
        return Splits(pool_index, empty, empty, empty)
    strata = pool_labels if (has_labels and data.stratify) else None
    train, val, test, warning = draw_splits(n_pool, n_test, n_val, strata, int(data.seed))
    if warning:
        warnings.append(warning)
    return Splits(pool_index, train, val, test)


def draw_splits(
    n_pool: int, n_test: int, n_val: int, strata: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """Pool positions (train, val, test): the test split first, then validation from the rest; and
    a warning when stratification was asked for but impossible (a seeded permutation then)."""
    positions = np.arange(n_pool)
    warning = None
    if strata is not None:
        try:
            rest, test = positions, positions[:0]
            if n_test > 0:
                rest, test = stratified_split(positions, strata, n_test, seed)
            train, val = stratified_split(rest, strata[rest], n_val, seed)
            return train, val, test, None
        except CannotStratify as exc:
            warning = f"data.stratify: splits drawn without stratification because {exc}"
    order = np.random.default_rng(seed).permutation(n_pool)
    test = order[:n_test]
    val = order[n_test : n_test + n_val]
    train = order[n_test + n_val :]
    return train, val, test, warning


def stratified_split(
    positions: np.ndarray, labels: np.ndarray, n_test: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) subsets of positions, each label in proportion: scikit-learn's
    `train_test_split(positions, test_size=n_test, stratify=labels, random_state=seed)`.

    The two cases scikit-learn refuses (a label with a single image; a side too small to hold
    every label) are checked first, so the fallback warning names the cause in the data's words
    rather than passing on scikit-learn's ValueError."""
    classes, class_counts = np.unique(labels, return_counts=True)
    n_train = len(labels) - n_test
    if class_counts.min() < 2:
        raise CannotStratify(f"label {classes[class_counts < 2][0]} has a single image")
    if n_train < len(classes) or n_test < len(classes):
        raise CannotStratify(
            f"a split of {min(n_train, n_test)} images cannot hold all {len(classes)} labels"
        )
    from sklearn.model_selection import train_test_split  # lazy: only stratified splits pay for it

    train, test = train_test_split(positions, test_size=n_test, stratify=labels, random_state=seed)
    return train, test


def choose_labeled(
    train_labels: np.ndarray,
    num_labeled: int,
    num_classes: int,
    balanced: bool,
    seed: int,
    problems: list[str],
) -> np.ndarray:
    """Positions in the training split that keep their label. There must be num_labeled labeled
    training images; balanced, each class must hold its share."""
    available = np.flatnonzero(train_labels >= 0)
    if num_labeled > len(available):
        problems.append(
            f"data.num_labeled={num_labeled} but the training split has only "
            f"{len(available)} labeled images"
        )
        return available[:0]
    rng = np.random.default_rng((seed, 2))
    if not balanced:
        return np.sort(rng.choice(available, size=num_labeled, replace=False))
    # balanced: ⌊n / C⌋ per class, the first n mod C classes one more
    base, extra = divmod(num_labeled, num_classes)
    chosen, short = [], []
    for c in range(num_classes):
        share = base + (1 if c < extra else 0)
        candidates = np.flatnonzero(train_labels == c)
        if len(candidates) < share:
            short.append(f"class {c} has {len(candidates)} training images (needs {share})")
            continue
        chosen.append(rng.choice(candidates, size=share, replace=False))
    if short:
        problems.append(
            f"data.balanced_labels: data.num_labeled={num_labeled} over {num_classes} classes, "
            f"but {'; '.join(short)}; lower data.num_labeled or set data.balanced_labels: false"
        )
        return available[:0]
    return np.sort(np.concatenate(chosen)) if chosen else available[:0]


def digest(images: np.ndarray, labels: np.ndarray) -> str:
    """8 hex characters of SHA-256 over shape, float32 pixels and int32 labels."""
    h = hashlib.sha256()
    h.update(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images, dtype=np.float32).data)  # no copy when contiguous
    h.update(np.ascontiguousarray(labels, dtype=np.int32).data)
    return h.hexdigest()[:8]
