"""The IDX file format of MNIST and Fashion-MNIST: a big-endian header (magic number, dimensions)
followed by uint8 values, gzipped or not."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from mixvae.data.file_kinds import gzip_problem

IDX_IMAGE_MAGIC = 2051
IDX_LABEL_MAGIC = 2049


def read_idx(path: Path, magic: int, problems: list[str]) -> np.ndarray | None:
    """An IDX file of uint8 images [N, rows, cols] (image magic) or labels [N] (label magic);
    None after appending the problem."""
    kind = "image" if magic == IDX_IMAGE_MAGIC else "label"
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)  # one call: faster than streaming through GzipFile
    except (OSError, EOFError, zlib.error) as exc:
        problems.append(gzip_problem(path, exc))
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


def idx_header_problem(path: Path, magic: int) -> str | None:
    """Why a gzipped file is not the IDX file expected (not gzip, wrong magic number), else None."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
    except (OSError, EOFError, zlib.error) as exc:
        return f"not a gzip file ({exc})"
    found = int.from_bytes(head, "big") if len(head) == 4 else None
    if found != magic:
        return f"magic number {found} (expected {magic})"
    return None
