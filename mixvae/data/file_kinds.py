"""Saying in one sentence what a data file is when it is not what mixvae expects: an npz that is no zip
archive, a .gz that is no gzip stream or stops short, an array of objects, text or floats where numbers
or integers belong. The readers (sources.py, mnist_files.py, idx.py) call these before or instead of
showing a library's own message, which would talk about zip internals or "pickled" data."""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

NPY_MAGIC = b"\x93NUMPY"
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK"

# What an array holds, by numpy's dtype kind, in words.
_KIND_WORDS = {
    "b": "booleans", "i": "integers", "u": "integers", "f": "floating-point numbers",
    "c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects", "M": "dates",
    "m": "time spans", "V": "records",
}


def npz_problem(path: Path) -> str | None:
    """Why `path` cannot be an npz archive (a zip file written by numpy.savez), else None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512)
        is_zip = zipfile.is_zipfile(path)
    except OSError as exc:
        return f"data: cannot read {path}: {exc.strerror or exc}"
    if is_zip and head.startswith(ZIP_MAGIC):  # numpy opens an archive only by its first bytes
        return None
    if size == 0:
        what = "it is empty"
    elif head.startswith(NPY_MAGIC):
        what = "it holds one array written by numpy.save (.npy); write the arrays with numpy.savez"
    elif head.startswith(ZIP_MAGIC):
        what = "it is a zip archive cut short or damaged; write it again"
    elif head.startswith(GZIP_MAGIC):
        what = "it is gzip-compressed data"
    elif _looks_like_text(head):
        what = "it is a text file"
    else:
        what = f"its first bytes are {head[:8].hex(' ')}"
    return f"data: {path} is not an npz file (a zip archive written by numpy.savez): {what}"


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def unreadable_key(path: Path, key: str, expected: str, exc: Exception) -> str:
    """The sentence for an archive member that numpy will not load; `expected` is what the key must
    hold ("numbers", "integers")."""
    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
        return (f"data: {path} key '{key}' holds Python objects (dtype object), which mixvae does not load; "
                f"store {expected} in it")
    if isinstance(exc, (zipfile.BadZipFile, zlib.error, EOFError)):
        return f"data: {path} key '{key}' is damaged inside the archive ({exc}); write the file again"
    return f"data: {path} key '{key}' cannot be read: {exc}"


def dtype_words(dtype: np.dtype) -> str:
    """'floating-point numbers (dtype float64)', 'text (dtype <U1)', …"""
    return f"{_KIND_WORDS.get(dtype.kind, 'values')} (dtype {dtype})"


def gzip_problem(path: Path, exc: BaseException) -> str:
    """The sentence for a .gz file that does not decompress."""
    if isinstance(exc, gzip.BadGzipFile):
        return f"data: {path} is not gzip-compressed, though its name ends in .gz"
    if isinstance(exc, EOFError):
        return f"data: {path} is a truncated gzip file: it ends before its end-of-stream marker"
    if isinstance(exc, zlib.error):
        return f"data: {path} is a damaged gzip file ({exc})"
    return f"data: cannot read {path}: {getattr(exc, 'strerror', None) or exc}"
