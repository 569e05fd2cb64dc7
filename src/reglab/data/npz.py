"""The user's arrays: a ``.npz`` file (numpy.savez) with ``x`` and ``y``.

``x`` is uint8 images, (N, height, width) or (N, height, width, channels), or
numeric features (N, F), used as they are; ``y`` integer labels 0..K-1.
Read with numpy's own loader, without pickles (a ``.npz`` may come from anywhere).
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reglab.data.errors import DataError
from reglab.data.userdata import FEATURES, IMAGES, UserData

log = logging.getLogger(__name__)


def read_npz(
    path: Path, num_classes: int | None = None, class_names: Sequence[str] = ()
) -> UserData:
    """Inputs (uint8 NHWC images or float32 features) and int64 labels of a .npz, checked.

    The number of classes is ``num_classes``, else ``len(class_names)``, else the
    largest label + 1; class names are ``class_names`` or "0".."K-1".
    """
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.path); give the .npz file to read")
    content = path.read_bytes()
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise DataError(
            f"{path}: not a readable .npz file ({error}); save it with "
            "numpy.savez(path, x=inputs, y=labels)"
        ) from None
    for name in ("x", "y"):
        if name not in arrays:
            raise DataError(
                f"{path}: no array {name!r} (it holds {sorted(arrays)}); save the inputs as x "
                "and the labels as y: numpy.savez(path, x=inputs, y=labels)"
            )
    x, y = arrays["x"], arrays["y"]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(
            f"{path}: y is {y.dtype} of shape {y.shape}; give one integer label per row of x"
        )
    if x.ndim < 1 or len(x) != len(y):
        raise DataError(
            f"{path}: x has {len(x) if x.ndim else 0} rows but y has {len(y)}; "
            "give one label per row of x"
        )
    inputs, kind = _inputs(path, x)
    labels = y.astype(np.int64)
    classes = num_classes or len(class_names) or (int(labels.max()) + 1 if labels.size else 0)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        bad = int(np.flatnonzero((labels < 0) | (labels >= classes))[0])
        raise DataError(
            f"{path}: label {int(labels[bad])} (y[{bad}]) is out of range 0..{classes - 1}; "
            "labels must be 0..K-1 (K = data.num_classes, or the number of data.class_names)"
        )
    if classes < 2:
        raise DataError(f"{path}: y holds a single class; a classifier needs at least 2")
    if class_names and len(class_names) != classes:
        raise DataError(
            f"data.class_names has {len(class_names)} names but {path} has {classes} classes "
            "(data.num_classes or the largest label + 1); give one name per class"
        )
    names = list(class_names) or [str(label) for label in range(classes)]
    log.info("%s: %d rows of %s, %d classes", path, len(labels), list(inputs.shape[1:]), classes)
    return UserData(
        {"train": (inputs, labels)}, names, {path.name: hashlib.sha256(content).hexdigest()}, kind
    )


def _inputs(path: Path, x: np.ndarray) -> tuple[np.ndarray, str]:
    if x.ndim == 2 and (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        features = x.astype(np.float32)
        if not np.isfinite(features).all():
            row = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
            raise DataError(f"{path}: x[{row}] holds a NaN or infinite value; replace it")
        return features, FEATURES
    if x.ndim in (3, 4) and x.dtype == np.uint8:
        images = x if x.ndim == 4 else x[..., np.newaxis]
        return images, IMAGES
    raise DataError(
        f"{path}: x is {x.dtype} of shape {x.shape}; give uint8 images (N, height, width"
        "[, channels]) or numeric features (N, F)"
    )
