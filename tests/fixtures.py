"""Small, deterministic data files for tests and benchmarks.

- `write_idx_dir`: an MNIST-like directory of the four IDX files (gzipped or not), 28×28 uint8
  images made from scikit-learn's digits placed on a canvas, labels 0–9.
- `write_corrupt_idx_dir`: the same with a wrong magic number in the training images.
- `write_mnist_npz`: the `mnist.npz` alternative (x_train, y_train, x_test, y_test).
- `write_npz`: a user npz file in the layout docs/user-guide.md describes, with knobs for bad variants.
- `digits_canvas` / `write_canvas_npz`: digits on a 28×28 canvas, upscaled or centred
  (bench/make_canvas_npz.py writes the benchmark data set with it).

Import from tests as `from fixtures import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import gzip
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

CANVAS = 28
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# ---- digits on a canvas


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


def _linear_upscale_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation weights (pixel centres aligned)."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    centres = np.clip(centres, 0, n_in - 1)
    lower = np.floor(centres).astype(int)
    upper = np.minimum(lower + 1, n_in - 1)
    frac = centres - lower
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lower] += 1 - frac
    m[np.arange(n_out), upper] += frac
    return m


def digits_canvas(
    mode: str = "upscale", copies: int = 1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1 797 digits on a 28×28 canvas as uint8 images [N, 28, 28] and int64 labels.

    mode 'upscale': each 8×8 digit is linearly upscaled to 24×24 and placed with a 2-pixel margin;
    mode 'centre': the 8×8 digit sits unscaled in the middle. Values 0–16 map to 0–255.
    copies > 1 appends shifted copies (each shifted by up to ±2 pixels, drawn with `seed`).
    """
    digits, labels = _digits()
    n = len(digits)
    if mode == "upscale":
        m = _linear_upscale_matrix(8, 24)
        glyphs = np.einsum("ij,njk,lk->nil", m, digits, m)
        offset = 2
    elif mode in ("centre", "center"):
        glyphs = digits
        offset = (CANVAS - 8) // 2
    else:
        raise ValueError(f"mode must be 'upscale' or 'centre', got {mode!r}")
    size = glyphs.shape[1]
    canvas = np.zeros((n, CANVAS, CANVAS))
    canvas[:, offset : offset + size, offset : offset + size] = glyphs
    base = np.clip(np.rint(canvas * (255.0 / 16.0)), 0, 255).astype(np.uint8)

    images, all_labels = [base], [labels]
    rng = np.random.default_rng(seed)
    for _ in range(copies - 1):
        shifts = rng.integers(-2, 3, size=(n, 2))
        shifted = np.stack(
            [np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(base, shifts)]
        )
        images.append(shifted)
        all_labels.append(labels)
    return np.concatenate(images), np.concatenate(all_labels)


def write_canvas_npz(path: Path, mode: str = "upscale", copies: int = 1, seed: int = 0) -> Path:
    images, labels = digits_canvas(mode, copies, seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=images, labels=labels)
    return path


# ---- IDX files


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> Path:
    """One IDX file of uint8 data; gzipped when the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 2051 if array.ndim == 3 else 2049
    header = struct.pack(">I", magic) + struct.pack(">" + "I" * array.ndim, *array.shape)
    payload = header + array.tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def mnist_like(n_train: int = 300, n_test: int = 60, seed: int = 0):
    """(x_train, y_train, x_test, y_test): uint8 28×28 digit images and uint8 labels."""
    images, labels = digits_canvas("upscale")
    order = np.random.default_rng(seed).permutation(len(images))[: n_train + n_test]
    x, y = images[order], labels[order].astype(np.uint8)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def write_idx_dir(
    directory: Path, n_train: int = 300, n_test: int = 60, gz: bool = True, seed: int = 0
) -> Path:
    """An MNIST-like directory with the four IDX files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for name, array in zip(IDX_NAMES, mnist_like(n_train, n_test, seed)):
        write_idx(directory / f"{name}{suffix}", array)
    return directory


def write_corrupt_idx_dir(directory: Path, bad_magic: int = 1234) -> Path:
    """Like write_idx_dir, but the training images carry a wrong magic number."""
    directory = write_idx_dir(directory)
    x_train = mnist_like()[0]
    write_idx(directory / f"{IDX_NAMES[0]}.gz", x_train, magic=bad_magic)
    return directory


def write_mnist_npz(directory: Path, name: str = "mnist", n_train: int = 300, n_test: int = 60) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = mnist_like(n_train, n_test)
    path = directory / f"{name}.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


# ---- user npz files


def write_npz(
    path: Path,
    n: int = 200,
    shape: tuple[int, ...] = (8, 8),
    dtype=np.uint8,
    labels: bool | np.ndarray = True,
    num_classes: int = 10,
    n_test: int = 0,
    extra: dict[str, np.ndarray] | None = None,
    seed: int = 0,
) -> Path:
    """An npz in the user guide's layout: images [n, *shape] of `dtype` (integer dtypes fill their
    range, floats lie in [0, 1]); labels balanced over `num_classes` (or the array given);
    `n_test` official test images; `extra` keys written as given."""
    rng = np.random.default_rng(seed)

    def images(count: int) -> np.ndarray:
        dt = np.dtype(dtype)
        if dt.kind in "iu":
            return rng.integers(0, np.iinfo(dt).max, size=(count, *shape), endpoint=True).astype(dt)
        return rng.random((count, *shape)).astype(dt)

    arrays: dict[str, np.ndarray] = {"images": images(n)}
    if isinstance(labels, np.ndarray):
        arrays["labels"] = labels
    elif labels:
        arrays["labels"] = (np.arange(n) % num_classes).astype(np.int64)
    if n_test:
        arrays["test_images"] = images(n_test)
        if labels is not False:
            arrays["test_labels"] = (np.arange(n_test) % num_classes).astype(np.int64)
    arrays.update(extra or {})
    path = Path(path)
    np.savez(path, **arrays)
    return path
