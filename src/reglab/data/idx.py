"""The IDX format of MNIST-style data sets: a validating reader and a writer.

An IDX file is big-endian: two zero bytes, a data-type code, the number of
dimensions, one uint32 size per dimension, then the items in C order. The
reader trusts none of it: the magic number, the dimensions and the item count
are checked against the file's size, so a truncated or foreign file is rejected
with a message naming it instead of turning into a silently misshapen array.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from reglab.core.io import write_atomic
from reglab.data.errors import IdxFormatError

GZIP_MAGIC = b"\x1f\x8b"

# IDX type code -> the (big-endian) NumPy dtype it stores.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}

# The magic numbers of MNIST's files: unsigned bytes with 3 (images) or 1 (labels) dimensions.
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801


def decompress(data: bytes, gzipped: bool) -> bytes:
    """The content of a file's bytes: gunzipped when the file is a ``.gz``.

    Raises ValueError with a short reason (truncated, corrupt, not gzip) that the
    caller prefixes with the file or mirror it came from.
    """
    if not gzipped:
        return data
    if not data.startswith(GZIP_MAGIC):
        raise ValueError(f"not gzip data (starts with {data[:4]!r}, gzip starts with 1f 8b)")
    try:
        return gzip.decompress(data)
    except EOFError:
        raise ValueError("truncated gzip: the stream ends before its end marker") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"corrupt gzip: {error}") from None


def is_gzip_name(path: str | Path) -> bool:
    return str(path).endswith(".gz")


def read_content(path: Path) -> bytes:
    """The decompressed bytes of ``path`` (gzip decided by the ``.gz`` suffix)."""
    try:
        return decompress(path.read_bytes(), is_gzip_name(path))
    except ValueError as error:
        raise IdxFormatError(f"{path}: {error}") from None


def parse_idx(content: bytes, name: str) -> np.ndarray:
    """Parse decompressed IDX bytes into an array in native byte order.

    ``name`` only labels error messages (usually the file's path).
    """
    if len(content) < 4:
        raise IdxFormatError(f"{name}: {len(content)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", content[:4])
    if content[:2] != b"\x00\x00":
        raise IdxFormatError(
            f"{name}: bad magic number 0x{magic:08x}; an IDX file starts with two zero bytes"
        )
    type_code, ndim = content[2], content[3]
    if type_code not in _DTYPES:
        raise IdxFormatError(
            f"{name}: unknown data type code 0x{type_code:02x} in magic number 0x{magic:08x}"
        )
    if ndim == 0:
        raise IdxFormatError(f"{name}: magic number 0x{magic:08x} declares zero dimensions")
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise IdxFormatError(
            f"{name}: header truncated: {ndim} dimensions need {header_size} bytes, "
            f"the file has {len(content)}"
        )
    shape = struct.unpack(f">{ndim}I", content[4:header_size])
    dtype = _DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize
    actual = len(content) - header_size
    dims = "x".join(str(size) for size in shape)
    if actual < expected:
        raise IdxFormatError(
            f"{name}: truncated: the header declares {dims} items ({expected} bytes) "
            f"but the file holds {actual} bytes of data"
        )
    if actual > expected:
        raise IdxFormatError(
            f"{name}: {actual - expected} unexpected bytes after the {dims} items "
            f"({expected} bytes) the header declares"
        )
    array = np.frombuffer(content, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: Path) -> np.ndarray:
    """Read and validate one IDX file, gzipped (``.gz``) or not."""
    return parse_idx(read_content(path), str(path))


def check_magic(array: np.ndarray, name: str, ndim: int) -> None:
    """Reject an IDX array that is not unsigned bytes with ``ndim`` dimensions."""
    if array.dtype != np.uint8 or array.ndim != ndim:
        expected = IMAGES_MAGIC if ndim == 3 else LABELS_MAGIC
        found = (_CODES.get(array.dtype, 0) << 8) | array.ndim
        raise IdxFormatError(
            f"{name}: expected magic number 0x{expected:08x} (unsigned bytes, {ndim} "
            f"dimensions), found 0x{found:08x} ({array.dtype}, {array.ndim} dimensions)"
        )


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of an array (the inverse of :func:`parse_idx`)."""
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    code = _CODES[native]
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    big_endian = np.ascontiguousarray(array, dtype=_DTYPES[code])
    return header + big_endian.tobytes()


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an array as IDX, atomically; gzipped when the name ends in ``.gz``.

    The gzip header carries no name or time, so the same array gives the same bytes.
    """
    content = encode_idx(array)
    if is_gzip_name(path):
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", filename="", mtime=0) as stream:
            stream.write(content)
        content = buffer.getvalue()
    write_atomic(path, content)
