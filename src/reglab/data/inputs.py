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
probe, the validation set and the test evaluation read bounded amounts.

How the rows leave the file matters for memory: a mapped file's resident
pages count in the process's RSS, and an epoch touches every page of the
training file. Worse, Linux maps a file's page cache a whole (large) folio at a
time: on this project's 6.x kernel with ext4, gathering 128 random 12 KiB rows
through the map made about 240 MiB resident. So the rows of a memory-mapped
``.npy`` are read with ``os.preadv`` from the mapped file at the array's offset,
straight into the batch (the same bytes; only the page cache holds the file),
and any other read through the map gives its pages back to the kernel when it
is done (``madvise(MADV_DONTNEED)``, a fraction of a millisecond). The process's
own memory stays bounded whatever the data set's size.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

# How the stored arrays may look: raw pixels, or float features (already model inputs
# but for the division by pixel_max).
STORED_DTYPES = ("uint8", "float32")


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
        self._file = _mapped_file(stored)
        self._row_bytes = int(np.prod(stored.shape[1:], dtype=np.int64)) * stored.itemsize

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
        """The stored (unscaled) values of ``key``: a row, a slice or an index array."""
        rows = self._rows(key)
        if rows is not None and self._file is not None:
            return self._read_rows(rows, isinstance(key, (int, np.integer)))
        values = np.array(self.stored[key])
        self.release()
        return values

    def release(self) -> None:
        """Give the memory map's resident pages back (the page cache keeps the data)."""
        mapping = getattr(self.stored, "_mmap", None)
        if isinstance(mapping, mmap.mmap):
            mapping.madvise(mmap.MADV_DONTNEED)

    def _rows(self, key: Any) -> np.ndarray | slice | None:
        """``key`` as a step-1 slice or an array of row numbers; None for other keys."""
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return slice(start, max(start, stop)) if step == 1 else np.arange(start, stop, step)
        if isinstance(key, (int, np.integer)):
            row = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} is out of range for {len(self)} rows")
            return slice(row, row + 1)
        if isinstance(key, (list, np.ndarray)):
            index = np.asarray(key)
            if index.ndim == 1 and np.issubdtype(index.dtype, np.integer):
                index = np.where(index < 0, index + len(self), index)
                if index.size and not (index.min() >= 0 and index.max() < len(self)):
                    raise IndexError(f"rows {key} are out of range for {len(self)} rows")
                return index
        return None

    def _read_rows(self, rows: np.ndarray | slice, one: bool) -> np.ndarray:
        """Rows of the file behind the map, by ``os.preadv`` into the result."""
        assert self._file is not None
        fd, offset = self._file.fileno(), int(self.stored.offset)
        if isinstance(rows, slice):
            out = np.empty((rows.stop - rows.start, *self.shape[1:]), self.stored.dtype)
            if out.size:
                _read_exactly(fd, memoryview(out).cast("B"), offset + rows.start * self._row_bytes)
        else:
            out = np.empty((len(rows), *self.shape[1:]), self.stored.dtype)
            if not out.size:
                return out
            flat = memoryview(out).cast("B")
            size = self._row_bytes
            for position, row in enumerate(rows.tolist()):
                target = flat[position * size : (position + 1) * size]
                _read_exactly(fd, target, offset + row * size)
        return out[0] if one else out

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


def _mapped_file(stored: np.ndarray) -> Any:
    """The open file behind a whole, C-ordered ``np.memmap`` (as ``np.load`` maps a
    ``.npy``), else None: only then are its rows where the offset says."""
    if not (
        isinstance(stored, np.memmap)
        and isinstance(getattr(stored, "_mmap", None), mmap.mmap)
        and stored.filename
        and stored.flags.c_contiguous
        and stored.base is stored._mmap
    ):
        return None
    return open(stored.filename, "rb", buffering=0)  # noqa: SIM115 - lives as long as the array


def _read_exactly(fd: int, target: memoryview, offset: int) -> None:
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got <= 0:
            raise OSError(f"file descriptor {fd}: ended {len(target) - done} bytes early")
        done += got


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
