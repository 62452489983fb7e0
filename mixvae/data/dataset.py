"""The Dataset the trainer receives and the one pipeline that builds it, for training
(`load_dataset`, may download) and for validation (`probe_dataset`, never downloads):

    read the source ─► resolve the test source ─► draw pool / test / val / train ─►
    choose the labeled subset ─► check the data rules ─► scale to float32 and gather the splits

Every problem a stage finds is collected and raised together in one `DataError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixvae.data.checks import (
    check_fractions,
    check_training_size,
    check_values,
    requested_test_source,
    resolve_test_source,
)
from mixvae.data.errors import DataError
from mixvae.data.mnist_files import MNIST_IMAGE_SIZE
from mixvae.data.raw import RawData
from mixvae.data.sources import WILL_DOWNLOAD, read_source
from mixvae.data.splits import Splits, choose_labeled, digest, draw_pool, split_pool


@dataclass(frozen=True, eq=False)
class Dataset:
    """The three splits, scaled to float32 `[N, H, W, Ch]`, with int32 labels (−1 = unlabeled)."""

    name: str
    source: str  # file the pool images were read from
    image_shape: tuple[int, int, int]  # (H, W, Ch)
    scale_used: float
    train_x: np.ndarray
    train_y: np.ndarray  # semi-supervised labels: −1 except for the labeled subset
    train_y_true: np.ndarray  # true labels of the training split (−1 where the data set has none)
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    train_index: np.ndarray  # positions in the source's pool array (before any num_samples cap)
    val_index: np.ndarray
    test_index: np.ndarray  # positions in the official test set when test_source is 'official'
    has_labels: bool
    test_source: str  # 'official' or 'pool'
    digest: str  # 8 hex chars over the training split (scaled images + semi-supervised labels)
    warnings: list[str] = field(default_factory=list)
    test_file: str = ""  # file the test images were read from

    @property
    def n_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def n_val(self) -> int:
        return int(self.val_x.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_x.shape[0])

    @property
    def n_labeled(self) -> int:
        return int(np.count_nonzero(self.train_y >= 0))

    @property
    def split_sizes(self) -> str:
        return f"{self.n_train}/{self.n_val}/{self.n_test}"

    def summary_line(self) -> str:
        h, w, ch = self.image_shape
        return (
            f"{self.name} {h}x{w}x{ch} · train {self.n_train} / val {self.n_val} / "
            f"test {self.n_test} · labeled {self.n_labeled} · digest {self.digest}"
        )


# --------------------------------------------------------------------------------------------
# Public entry points


def load_dataset(cfg: Any, *, allow_download: bool = False) -> Dataset:
    """Training path: read, split, check and scale. Downloads only with data.download and
    allow_download. Raises DataError with every problem found."""
    dataset, warnings = _build(cfg, allow_download=allow_download, probing=False)
    assert dataset is not None  # without probing, missing files are an error
    return dataset


def probe_dataset(cfg: Any) -> tuple[Dataset | None, list[str]]:
    """Validation's data stage: the same checks as training, never a download.

    Returns (dataset, warnings). The dataset is None only when MNIST-style files are missing and
    data.download is true: training would download them, so that is a warning, not an error.
    """
    return _build(cfg, allow_download=False, probing=True)


def expected_image_shape(cfg: Any) -> tuple[int, int, int] | None:
    """The image shape known without reading files (digits, mnist, fashion_mnist, mnist5k), else None."""
    name = cfg.data.dataset
    if name == "digits":
        return (8, 8, 1)
    if name in ("mnist", "fashion_mnist", "mnist5k"):
        return (*MNIST_IMAGE_SIZE, 1)
    return None


def dataset_record(ds: Dataset) -> dict[str, dict[str, Any]]:
    """What tracking needs for `mlflow.log_input`, keyed by context.

    Each entry: name "<dataset>-<split>", features (scaled images), targets (labels; the training
    split's are the semi-supervised ones), source (file), context, digest. An empty test split
    has no entry.
    """
    splits = [
        ("training", "train", ds.train_x, ds.train_y, ds.source),
        ("validation", "val", ds.val_x, ds.val_y, ds.source),
        ("testing", "test", ds.test_x, ds.test_y, ds.test_file or ds.source),
    ]
    record = {}
    for context, split, x, y, source in splits:
        if x.shape[0] == 0:
            continue
        record[context] = {
            "name": f"{ds.name}-{split}",
            "features": x,
            "targets": y,
            "source": source,
            "context": context,
            "digest": ds.digest if split == "train" else digest(x, y),
        }
    return record


# --------------------------------------------------------------------------------------------
# The one pipeline


def _build(cfg: Any, *, allow_download: bool, probing: bool) -> tuple[Dataset | None, list[str]]:
    data = cfg.data
    problems: list[str] = []
    warnings: list[str] = []

    requested_test = requested_test_source(data, problems)
    raw = read_source(cfg, allow_download, probing, problems, warnings)
    if raw is WILL_DOWNLOAD:
        if problems:
            raise DataError(problems)
        return None, warnings
    if raw is None:
        raise DataError(problems or [f"data: cannot read the {data.dataset} data set"])

    test_source = resolve_test_source(raw, requested_test, problems)
    fractions_ok = check_fractions(data, test_source, problems)
    pool_index = draw_pool(raw.images.shape[0], data.num_samples, int(data.seed))
    pool_labels = None if raw.labels is None else raw.labels[pool_index]
    has_labels = pool_labels is not None and bool(np.any(pool_labels >= 0))
    scale = raw.default_scale if data.scale == "auto" else float(data.scale)
    check_values(cfg, raw, test_source, scale, has_labels, problems)
    if not fractions_ok:
        raise DataError(problems)

    splits = split_pool(data, pool_index, pool_labels, has_labels, test_source, problems, warnings)
    check_training_size(cfg, len(splits.train), problems)
    train_y_true = _labels_at(pool_labels, splits.train)
    labeled = np.arange(0)
    if int(data.num_labeled) > 0 and has_labels and len(splits.train):
        labeled = choose_labeled(
            train_y_true, int(data.num_labeled), int(cfg.model.num_classes),
            bool(data.balanced_labels), int(data.seed), problems,
        )
    if problems:
        raise DataError(problems)
    train_y = np.full(len(splits.train), -1, np.int32)  # only the labeled subset keeps its label
    train_y[labeled] = train_y_true[labeled]
    dataset = _assemble(raw, data.dataset, scale, splits, pool_labels, train_y_true, train_y,
                        has_labels, test_source, warnings)
    return dataset, warnings


def _labels_at(labels: np.ndarray | None, positions: np.ndarray) -> np.ndarray:
    """int32 labels at the positions; −1 everywhere when the data set has none."""
    if labels is None:
        return np.full(len(positions), -1, np.int32)
    return labels[positions].astype(np.int32)


def _scaled(images: np.ndarray, scale: float) -> np.ndarray:
    """Scaling: float32 pixels divided by one global number."""
    out = images.astype(np.float32)  # a fresh array, divided in place
    out /= np.float32(scale)
    return out


def _assemble(
    raw: RawData,
    name: str,
    scale: float,
    splits: Splits,
    pool_labels: np.ndarray | None,
    train_y_true: np.ndarray,
    train_y: np.ndarray,
    has_labels: bool,
    test_source: str,
    warnings: list[str],
) -> Dataset:
    """Gather and scale the splits (in the stored dtype first, uint8 for MNIST: 4× less memory
    traffic than scaling the whole source)."""
    train_index = splits.pool_index[splits.train]  # positions in the source
    val_index = splits.pool_index[splits.val]
    train_x = _scaled(raw.images[train_index], scale)
    if test_source == "official":
        n_test = raw.test_images.shape[0]
        test_x = _scaled(raw.test_images, scale)
        test_y = _labels_at(raw.test_labels, np.arange(n_test))
        test_index, test_file = np.arange(n_test), raw.test_file
    else:
        test_index, test_file = splits.pool_index[splits.test], raw.source
        test_x = _scaled(raw.images[test_index], scale)
        test_y = _labels_at(pool_labels, splits.test)
    return Dataset(
        name=name,
        source=raw.source,
        image_shape=tuple(int(d) for d in raw.images.shape[1:]),
        scale_used=float(scale),
        train_x=train_x,
        train_y=train_y,
        train_y_true=train_y_true,
        val_x=_scaled(raw.images[val_index], scale),
        val_y=_labels_at(pool_labels, splits.val),
        test_x=test_x,
        test_y=test_y,
        train_index=train_index,
        val_index=val_index,
        test_index=test_index,
        has_labels=has_labels,
        test_source=test_source,
        digest=digest(train_x, train_y),
        warnings=list(warnings),
        test_file=test_file,
    )
