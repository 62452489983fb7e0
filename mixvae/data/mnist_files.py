"""MNIST and Fashion-MNIST on disk: where the files are looked for, the message when they are
missing, and reading the four IDX files (or the single `<dataset>.npz` alternative)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mixvae.data.file_kinds import npz_problem, unreadable_key
from mixvae.data.idx import IDX_IMAGE_MAGIC, IDX_LABEL_MAGIC, read_idx
from mixvae.data.raw import RawData

DATA_DIR_ENV = "MIXVAE_DATA_DIR"
MNIST_IMAGE_SIZE = (28, 28)
# (role, file stem, magic) in the order the missing-files message lists them.
IDX_FILES = (
    ("train_images", "train-images-idx3-ubyte", IDX_IMAGE_MAGIC),
    ("train_labels", "train-labels-idx1-ubyte", IDX_LABEL_MAGIC),
    ("test_images", "t10k-images-idx3-ubyte", IDX_IMAGE_MAGIC),
    ("test_labels", "t10k-labels-idx1-ubyte", IDX_LABEL_MAGIC),
)
MNIST_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


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
    return cache / data.dataset


def locate_mnist(directory: Path, name: str) -> tuple[dict[str, Path] | Path | None, list[str]]:
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


def missing_files_message(name: str, directory: Path, missing: list[str]) -> str:
    """Where the files were looked for, which ones are expected or missing, and how to fix it."""
    names = [f"{stem}.gz" for _, stem, _ in IDX_FILES]
    lines = [
        f"data: {name} files not found",
        f"  looked in:  {display_path(directory)}",
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


def display_path(path: Path) -> str:
    """The path with the home directory shortened to ~ when it lies inside it."""
    try:
        return "~/" + str(path.resolve().relative_to(Path.home().resolve()))
    except (ValueError, OSError, RuntimeError):
        return str(path)


def read_mnist_idx(files: dict[str, Path], problems: list[str]) -> RawData | None:
    """The four IDX files: images and labels must agree in count, images must be 28×28."""
    arrays = {role: read_idx(files[role], magic, problems) for role, _, magic in IDX_FILES}
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
    return RawData(
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


def read_mnist_npz(path: Path, problems: list[str]) -> RawData | None:
    """`<dataset>.npz` with x_train, y_train, x_test, y_test (the Keras layout)."""
    problem = npz_problem(path)
    if problem:
        problems.append(problem)
        return None
    key = None
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in MNIST_NPZ_KEYS if k not in archive.files]
            if missing:
                problems.append(
                    f"data: {path} lacks key(s) {', '.join(missing)}; expected "
                    f"{', '.join(MNIST_NPZ_KEYS)}"
                )
                return None
            arrays = {}
            for key in MNIST_NPZ_KEYS:
                arrays[key] = archive[key]
    except Exception as exc:
        problems.append(unreadable_key(path, key, "integers", exc) if key
                        else f"data: cannot read {path} as an npz file: {exc}")
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
    return RawData(
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
