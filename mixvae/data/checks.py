"""The data rules checked before training: where the test split comes from, split fractions, pixel
values (finite; in [0, 1] after scaling for bce), label values, and whether the training split is
large enough for a full batch and for the vamp pseudo-inputs. Each check appends full messages to
`problems`, so a stage reports everything it found at once."""

from __future__ import annotations

from typing import Any

import numpy as np

from mixvae.config import BUNDLED_DATASETS  # the one list of package-bundled data sets
from mixvae.data.raw import RawData


def requested_test_source(data: Any, problems: list[str]) -> str:
    """data.test_source, known before reading: a bundled data set has no official test set."""
    requested = data.test_source
    if data.dataset in BUNDLED_DATASETS and requested == "official":
        problems.append(
            f"data.test_source='official': {data.dataset} has no official test set; "
            "use test_source pool or auto"
        )
        return "pool"
    return requested


def resolve_test_source(raw: RawData, requested: str, problems: list[str]) -> str:
    """'official' or 'pool'; an official test set asked for but absent in the file is an error."""
    has_official = raw.test_images is not None
    if requested == "official" and not has_official:
        problems.append(
            f"data.test_source='official': {raw.source} has no official test set "
            "(an npz file needs the key 'test_images'); use test_source pool or auto"
        )
        return "pool"
    if requested == "auto":
        return "official" if has_official else "pool"
    return requested


def check_fractions(data: Any, test_source: str, problems: list[str]) -> bool:
    """With a test split drawn from the pool, val_fraction + test_fraction < 0.9."""
    val_fraction, test_fraction = float(data.val_fraction), float(data.test_fraction)
    if test_source == "pool" and round(val_fraction + test_fraction, 9) >= 0.9:
        problems.append(
            f"data.val_fraction + data.test_fraction = {val_fraction:g} + {test_fraction:g} "
            f"= {val_fraction + test_fraction:g} leaves too little for training (must be < 0.9)"
        )
        return False
    return True


def check_values(
    cfg: Any, raw: RawData, test_source: str, scale: float, has_labels: bool, problems: list[str]
) -> None:
    """Pixels (finite, and in range for bce), label values, and labels to keep for num_labeled."""
    sources = [(raw.images, raw.images_where)]
    if test_source == "official":
        sources.append((raw.test_images, raw.test_images_where))
    check_pixels(sources, scale, cfg.model.reconstruction_loss, problems)
    num_classes = int(cfg.model.num_classes)
    check_label_values(raw.labels, raw.source, num_classes, problems)
    if test_source == "official":
        check_label_values(raw.test_labels, raw.test_file, num_classes, problems)
    num_labeled = int(cfg.data.num_labeled)
    if num_labeled > 0 and not has_labels:
        problems.append(
            f"data.num_labeled={num_labeled} but the data set has no labels ({raw.source}); "
            "set data.num_labeled: 0"
        )


def check_pixels(
    sources: list[tuple[np.ndarray | None, str]], scale: float, reconstruction_loss: str,
    problems: list[str],
) -> None:
    """Non-finite pixels are errors naming the file/key; with bce, pixels / scale must lie in [0, 1].

    `sources` pairs each image array with where to name it in a message."""
    low, high = np.inf, -np.inf
    all_finite = True
    for array, place in sources:
        if array is None or array.size == 0:
            continue
        if array.dtype.kind == "f":
            bad = ~np.isfinite(array)
            n_bad = int(np.count_nonzero(bad))
            if n_bad:
                first = int(np.flatnonzero(bad.reshape(len(array), -1).any(axis=1))[0])
                problems.append(
                    f"data: {place} holds {n_bad} NaN or infinite pixel values "
                    f"(first in image {first}); pixels must be finite"
                )
                all_finite = False
                continue
        low = min(low, float(array.min()))
        high = max(high, float(array.max()))
    if reconstruction_loss != "bce" or not all_finite or low > high:
        return
    if low / scale < 0.0 or high / scale > 1.0:
        fix = f"set data.scale: {high:.6g} (the largest pixel)" if low >= 0 else "rescale the data"
        problems.append(
            f"model.reconstruction_loss is bce, which needs scaled pixels in [0, 1], but "
            f"pixels / data.scale ({scale:g}) span [{low / scale:.6g}, {high / scale:.6g}]; "
            f"{fix}, or use model.reconstruction_loss: mse"
        )


def check_label_values(
    labels: np.ndarray | None, where: str, num_classes: int, problems: list[str]
) -> None:
    """Labels lie in [0, C) or are −1 (unknown)."""
    if labels is None or labels.size == 0:
        return
    bad = (labels >= num_classes) | (labels < -1)
    if np.any(bad):
        values = np.unique(labels[bad])
        shown = ", ".join(str(int(v)) for v in values[:10]) + (" …" if len(values) > 10 else "")
        problems.append(
            f"data: labels in {where} must lie in [0, {num_classes}) (model.num_classes="
            f"{num_classes}) or be -1 for unknown; found {shown} "
            f"({int(np.count_nonzero(bad))} images)"
        )


def check_training_size(cfg: Any, n_train: int, problems: list[str]) -> None:
    """A full batch when drop_remainder is on; K training images for K vamp pseudo-inputs."""
    if not n_train:
        return
    batch_size = int(cfg.training.batch_size)
    if bool(cfg.training.drop_remainder) and n_train < batch_size:
        problems.append(
            f"training.batch_size={batch_size} is larger than the training split "
            f"({n_train} images) with training.drop_remainder: true, so there is no full batch; "
            "lower training.batch_size or set training.drop_remainder: false"
        )
    k = int(cfg.model.num_components)
    if cfg.model.prior_type == "vamp" and k > n_train:
        problems.append(
            f"model.num_components={k} with prior_type vamp needs at least that many training "
            f"images to initialise the pseudo-inputs; the training split has {n_train}"
        )
