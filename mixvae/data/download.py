"""Fetching the MNIST / Fashion-MNIST IDX files (training only, with data.download), and the error
that says the machine looks offline. Validation and tests never come here."""

from __future__ import annotations

import os
from pathlib import Path

from mixvae.data.errors import DataError
from mixvae.data.idx import idx_header_problem
from mixvae.data.mnist_files import IDX_FILES

# Public mirrors of the original MNIST / Fashion-MNIST IDX files. The environment
# variable MIXVAE_DATA_MIRROR replaces them: files are fetched from "<mirror>/<file name>", and a
# "{dataset}" in the mirror is replaced by the data set name.
DEFAULT_MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist",
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
}
MIRROR_ENV = "MIXVAE_DATA_MIRROR"
DOWNLOAD_TIMEOUT_S = 15.0


def mirror_url(name: str, file_name: str) -> str:
    """Where one file of the data set is fetched from."""
    mirror = os.environ.get(MIRROR_ENV) or DEFAULT_MIRRORS[name]
    return mirror.replace("{dataset}", name).rstrip("/") + "/" + file_name


def download_mnist(name: str, directory: Path, missing_message: str) -> None:
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
        url = mirror_url(name, target.name)
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
        header_problem = idx_header_problem(part, magic)
        if header_problem:
            clean_up(part)
            raise DataError(f"data: download of {url} gave a file that is not IDX: {header_problem}")
        part.replace(target)
