"""What every source reader hands over: the arrays as stored, before splitting and scaling."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawData:
    """Images as stored (native dtype, image channel axis added) and labels as int64 (None = none)."""

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
