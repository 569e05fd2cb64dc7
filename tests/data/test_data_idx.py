"""The IDX reader: good files round-trip, each kind of malformed file is named and explained."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from reglab.data.errors import IdxFormatError
from reglab.data.idx import check_magic, encode_idx, read_idx, write_idx


@pytest.mark.parametrize("filename", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_images_round_trip_with_mnist_header(tmp_path: Path, filename: str):
    images = np.arange(5 * 3 * 2, dtype=np.uint8).reshape(5, 3, 2)
    path = tmp_path / filename
    write_idx(path, images)

    content = gzip.decompress(path.read_bytes()) if filename.endswith(".gz") else path.read_bytes()
    assert content[:16] == bytes.fromhex("00000803000000050000000300000002")
    assert content[16:] == bytes(range(30))
    loaded = read_idx(path)
    assert loaded.dtype == np.uint8
    assert loaded.shape == (5, 3, 2)
    np.testing.assert_array_equal(loaded, images)
    check_magic(loaded, filename, ndim=3)


@pytest.mark.parametrize(
    ("dtype", "type_code"),
    [(np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)],
)
def test_other_idx_types_are_big_endian_and_round_trip(tmp_path: Path, dtype, type_code: int):
    values = np.array([[-3, 2], [1, 7]], dtype=dtype)
    path = tmp_path / "values.idx"
    write_idx(path, values)
    assert path.read_bytes()[:4] == bytes([0, 0, type_code, 2])
    assert path.read_bytes()[12:] == values.astype(np.dtype(dtype).newbyteorder(">")).tobytes()
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded, values)


def test_gzip_output_is_byte_identical_across_writes(tmp_path: Path):
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    write_idx(tmp_path / "a.gz", labels)
    write_idx(tmp_path / "b.gz", labels)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


GOOD = encode_idx(np.zeros((5, 4, 4), dtype=np.uint8))  # 16-byte header + 80 bytes


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\x00", "2 bytes is too short for an IDX header"),
        (b"\x12\x34" + GOOD[2:], "bad magic number 0x12340803; an IDX file starts with two zero"),
        (b"\x00\x00\x07\x03" + GOOD[4:], "unknown data type code 0x07 in magic number 0x00000703"),
        (b"\x00\x00\x08\x00", "magic number 0x00000800 declares zero dimensions"),
        (GOOD[:10], "header truncated: 3 dimensions need 16 bytes, the file has 10"),
        (
            GOOD[:-1],
            "truncated: the header declares 5x4x4 items (80 bytes) but the file holds 79 bytes",
        ),
        (GOOD + b"abc", "3 unexpected bytes after the 5x4x4 items (80 bytes) the header declares"),
        (
            struct.pack(">BBBBI", 0, 0, 0x0B, 1, 3) + b"\x00" * 5,
            "truncated: the header declares 3 items (6 bytes) but the file holds 5 bytes",
        ),
    ],
)
def test_malformed_idx_is_rejected_naming_file_and_problem(
    tmp_path: Path, content: bytes, problem: str
):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(IdxFormatError) as caught:
        read_idx(path)
    assert str(caught.value).startswith(f"{path}: {problem}")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[: len(data) // 2], "truncated gzip: the stream ends before its end"),
        (lambda data: data[:-8] + b"\x00" * 8, "corrupt gzip: CRC check failed"),
        (lambda data: b"PK" + data[2:], "not gzip data (starts with b'PK"),
    ],
)
def test_damaged_gzip_is_rejected_naming_file_and_problem(tmp_path: Path, damage, problem: str):
    path = tmp_path / "broken-idx3-ubyte.gz"
    write_idx(path, np.arange(200, dtype=np.uint8).reshape(2, 10, 10))
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(IdxFormatError) as caught:
        read_idx(path)
    assert str(caught.value).startswith(f"{path}: {problem}")


def test_labels_where_images_are_expected_name_both_magic_numbers():
    labels = np.zeros(4, dtype=np.uint8)
    with pytest.raises(IdxFormatError) as caught:
        check_magic(labels, "t10k-images-idx3-ubyte.gz", ndim=3)
    assert str(caught.value) == (
        "t10k-images-idx3-ubyte.gz: expected magic number 0x00000803 (unsigned bytes, "
        "3 dimensions), found 0x00000801 (uint8, 1 dimensions)"
    )
    with pytest.raises(IdxFormatError, match="found 0x00000d03 \\(float32, 3 dimensions\\)"):
        check_magic(np.zeros((1, 2, 2), np.float32), "x", ndim=3)
