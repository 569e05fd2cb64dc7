"""scikit-learn's bundled 8x8 digits, exported as IDX files like any other data set.

The digits ship inside scikit-learn, so they need no network. Exporting them to
IDX in the raw folder lets preprocess read every data set the same way, and the
export is checked against the SHA-256 in ``conf/data/digits.yaml`` like a
download: a scikit-learn release that changed the data would be caught.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from reglab.config.data import DataFile
from reglab.data.errors import DataError
from reglab.data.idx import encode_idx, write_idx

log = logging.getLogger(__name__)


def load_digits_arrays() -> dict[str, np.ndarray]:
    """The images (uint8 values 0..16, shape 1797x8x8) and labels, keyed like ``files``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return {
        "train_images": bunch.images.astype(np.uint8),
        "train_labels": bunch.target.astype(np.uint8),
    }


def export_digits(files: Mapping[str, DataFile], destination: Path) -> dict[str, Path]:
    """Write the digits as verified IDX files into ``destination``; return their paths."""
    destination.mkdir(parents=True, exist_ok=True)
    arrays = load_digits_arrays()
    paths: dict[str, Path] = {}
    for key, data_file in files.items():
        if key not in arrays:
            raise DataError(f"data.files.{key}: the digits export has only {sorted(arrays)}")
        target = destination / data_file.filename
        # The checksum is of the IDX content, whether or not the file is gzipped.
        actual = hashlib.sha256(encode_idx(arrays[key])).hexdigest()
        if actual != data_file.sha256:
            raise DataError(
                f"{data_file.filename}: scikit-learn's digits have SHA-256 {actual}, "
                f"expected {data_file.sha256}; update data.files.{key}.sha256 in "
                "conf/data/digits.yaml if the new data is intended"
            )
        write_idx(target, arrays[key])
        log.info("%s: exported %s from scikit-learn; checksum verified", target, key)
        paths[key] = target
    return paths
