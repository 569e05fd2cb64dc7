"""The model's input: stored arrays, memory-mapped, scaled as they are read.

``data/processed`` keeps images as their raw uint8 pixels (NHWC) and feature
tables as float32; the manifest's ``pixel_max`` says what to divide by. The model
input is always ``float32(x) / float32(pixel_max)``: :func:`scale` in NumPy,
:func:`scale_tensor` in a ``tf.data`` pipeline. Both give the same bits as the
float32 arrays preprocess used to store (IEEE division of the same float32
operands), so a run trains on exactly the numbers it did before; a float table
with ``pixel_max`` 1.0 passes unchanged.

A :class:`ModelInputs` wraps one stored array (a memory map in the training
process) and hands out scaled slices and gathers, so the loss decomposition's
probe, the validation set and the test evaluation read bounded amounts. The
pages a read touched are given back to the kernel every :data:`RELEASE_BYTES`
read: a mapped file's resident pages count in the process's RSS, and an epoch
touches every page of the training file; the page cache keeps them for the next
read, so the process's own memory stays bounded whatever the data set's size.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# How the stored arrays may look: raw pixels, or float features (already model inputs
# but for the division by pixel_max).
STORED_DTYPES = ("uint8", "float32")

# Bytes read through a memory map between two releases of its resident pages.
RELEASE_BYTES = 64 << 20


def stored_dtype(array: np.ndarray) -> np.dtype:
    """uint8 pixels stay uint8; any other array is stored as float32 (its model-input dtype)."""
    return np.dtype(np.uint8) if array.dtype == np.uint8 else np.dtype(np.float32)


def scale(x: np.ndarray, pixel_max: float) -> np.ndarray:
    """The model input of stored values ``x``: ``float32(x) / float32(pixel_max)``."""
    return np.asarray(x).astype(np.float32) / np.float32(pixel_max)


def scale_tensor(x: Any, pixel_max: float) -> Any:
    """:func:`scale` in TensorFlow, for a ``tf.data`` pipeline: the same bits."""
    import tensorflow as tf

    return tf.cast(x, tf.float32) / tf.constant(pixel_max, tf.float32)


def open_stored(path: str | Path, mmap_mode: str | None = "r") -> np.ndarray:
    """A stored array, memory-mapped (read-only) by default."""
    return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


class ModelInputs:
    """A stored array read as model inputs: ``x[key]`` is ``scale(stored[key], pixel_max)``.

    It has the length and shape of the stored array (NHWC images or (N, F)
    features) and the dtype of the model input, float32. ``x[index]`` reads only
    the rows asked for; :meth:`batches` walks the whole array a batch at a time.
    Converting it to one array (``np.asarray``) is refused: reading the whole data
    set into float32 at once is what this class is there to avoid.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, stored: np.ndarray, pixel_max: float):
        if stored.dtype.name not in STORED_DTYPES:
            raise ValueError(f"stored dtype {stored.dtype}: expected one of {STORED_DTYPES}")
        if not pixel_max > 0:
            raise ValueError(f"pixel_max={pixel_max!r}: must be positive")
        self.stored = stored
        self.pixel_max = float(pixel_max)
        self._read_since_release = 0

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.stored.shape)

    @property
    def ndim(self) -> int:
        return self.stored.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        return scale(self.take(key), self.pixel_max)

    def take(self, key: Any) -> np.ndarray:
        """The stored (unscaled) values of ``key``, copied out of the memory map."""
        values = np.array(self.stored[key])
        self._read_since_release += values.nbytes
        if self._read_since_release >= RELEASE_BYTES:
            self.release()
        return values

    def release(self) -> None:
        """Give the memory map's resident pages back (the page cache keeps the data)."""
        self._read_since_release = 0
        mapping = getattr(self.stored, "_mmap", None)
        if isinstance(mapping, mmap.mmap):
            mapping.madvise(mmap.MADV_DONTNEED)

    def batches(self, size: int) -> Iterator[np.ndarray]:
        """Consecutive scaled batches of ``size`` rows (the last may be short)."""
        for start in range(0, len(self), size):
            yield self[start : start + size]

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(
            "ModelInputs is read in slices or batches (x[start:stop], x.batches(n)); "
            "index it instead of converting the whole data set to one array"
        )

    def __repr__(self) -> str:
        kind = "memory-mapped" if isinstance(self.stored, np.memmap) else "in-memory"
        return f"ModelInputs({kind} {self.stored.dtype} {self.shape}, pixel_max={self.pixel_max:g})"


def as_inputs(x: np.ndarray | ModelInputs) -> ModelInputs:
    """``x`` as :class:`ModelInputs`; a plain float array is taken as model inputs already
    (as float32, the model's input dtype), a plain integer array is refused: it would be
    unscaled pixels."""
    if isinstance(x, ModelInputs):
        return x
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(
            f"a plain {x.dtype} array is not a model input; wrap stored arrays in "
            "ModelInputs(stored, pixel_max) or pass float inputs"
        )
    return ModelInputs(x.astype(np.float32, copy=False), 1.0)
