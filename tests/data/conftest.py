"""Fixtures for the data tests: small synthetic IDX data sets and a misbehaving HTTP mirror."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from reglab.config.data import DataFile
from reglab.data.idx import encode_idx, write_idx

IMAGE_SIDE = 4
NUM_CLASSES = 10
STALL_LIMIT_S = 10.0


def unique_images(count: int, start: int = 0) -> np.ndarray:
    """uint8 images whose first three pixels spell a serial number, so each one is unique."""
    serials = np.arange(start, start + count)
    images = np.zeros((count, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    flat = images.reshape(count, -1)
    flat[:, 0] = serials % 256
    flat[:, 1] = (serials // 256) % 256
    flat[:, 2] = serials // 65536
    flat[:, 3:] = (serials[:, None] * 7 + np.arange(IMAGE_SIDE * IMAGE_SIDE - 3)) % 256
    return images


def imbalanced_labels(count: int, seed: int) -> np.ndarray:
    """Labels with unequal class frequencies, so stratification has something to keep."""
    weights = np.arange(1, NUM_CLASSES + 1, dtype=float)
    return (
        np.random.default_rng(seed)
        .choice(NUM_CLASSES, size=count, p=weights / weights.sum())
        .astype(np.uint8)
    )


@dataclass
class SyntheticSet:
    """A small IDX data set on disk, laid out like MNIST's four gzipped files."""

    folder: Path
    files: dict[str, DataFile]
    arrays: dict[str, np.ndarray]


def write_synthetic(
    folder: Path, train_count: int = 1200, test_count: int = 400, seed: int = 0
) -> SyntheticSet:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": unique_images(train_count),
        "train_labels": imbalanced_labels(train_count, seed),
        "test_images": unique_images(test_count, start=train_count),
        "test_labels": imbalanced_labels(test_count, seed + 1),
    }
    names = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    files = {}
    for key, array in arrays.items():
        write_idx(folder / names[key], array)
        sha256 = hashlib.sha256(encode_idx(array)).hexdigest()
        files[key] = DataFile(filename=names[key], sha256=sha256)
    return SyntheticSet(folder=folder, files=files, arrays=arrays)


@pytest.fixture
def synthetic(tmp_path: Path) -> SyntheticSet:
    return write_synthetic(tmp_path / "source")


# ---------------------------------------------------------------- HTTP mirror


@dataclass
class MirrorServer:
    """Serves ``/<behaviour>/<filename>``; records every request as (behaviour, filename, Range)."""

    base_url: str
    payloads: dict[str, bytes]
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def url(self, behaviour: str) -> str:
        return f"{self.base_url}/{behaviour}/"

    def count(self, behaviour: str) -> int:
        return sum(1 for seen, _, _ in self.requests if seen == behaviour)

    def body(self, behaviour: str, filename: str) -> bytes:
        """The whole body a mirror of this behaviour announces for ``filename``."""
        payload = self.payloads[filename]
        if behaviour == "corrupt":
            return _corrupt(payload)
        if behaviour == "truncated":
            return payload[: len(payload) // 2]
        if behaviour == "wrong":
            return _gzip(b"\x00\x00\x08\x01\x00\x00\x00\x02\x01\x02")
        return payload


def _gzip(content: bytes) -> bytes:
    return gzip.compress(content, mtime=0)


def _corrupt(payload: bytes) -> bytes:
    """Flip bytes inside the deflate stream; the gzip header stays valid."""
    damaged = bytearray(payload)
    for offset in range(len(damaged) // 3, len(damaged) // 3 + 64):
        damaged[offset] ^= 0xFF
    return bytes(damaged)


def _handler(server_state: MirrorServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # keep test output clean

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            _, behaviour, filename = self.path.split("/", 2)
            range_header = self.headers.get("Range")
            server_state.requests.append((behaviour, filename, range_header))
            payload = server_state.payloads.get(filename)
            if payload is None or behaviour == "missing":
                self.send_error(404)
                return
            attempt = sum(
                1 for request in server_state.requests if request[:2] == (behaviour, filename)
            )
            if behaviour == "error500":
                self.send_error(500)
            elif behaviour == "stall":
                self._send(payload, upto=1000, then_stall=True)
            elif behaviour in ("corrupt", "truncated", "wrong"):
                self._send(server_state.body(behaviour, filename))
            elif behaviour == "drop":
                self._send(payload, upto=len(payload) // 2)
            elif behaviour == "resume":
                # Drops the first download halfway; honours Range afterwards.
                if attempt == 1:
                    self._send(payload, upto=len(payload) // 2)
                else:
                    self._send_range(payload, range_header)
            elif behaviour == "norange":
                # Drops the first download halfway; ignores Range afterwards.
                self._send(payload, upto=len(payload) // 2 if attempt == 1 else None)
            else:  # "good"
                self._send_range(payload, range_header)

        def _send(self, body: bytes, upto: int | None = None, then_stall: bool = False) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if upto is None else body[:upto])
            self.wfile.flush()
            if then_stall:
                server_state.stop.wait(STALL_LIMIT_S)

        def _send_range(self, body: bytes, range_header: str | None) -> None:
            if not range_header:
                self._send(body)
                return
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])

    return Handler


@pytest.fixture
def mirror_server(synthetic: SyntheticSet) -> Iterator[MirrorServer]:
    """An HTTP server on 127.0.0.1 (random port) serving the synthetic set's files."""
    payloads = {path.name: path.read_bytes() for path in synthetic.folder.iterdir()}
    state = MirrorServer(base_url="", payloads=payloads)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def refused_url() -> str:
    """A URL on a local port nobody listens on: connections are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def fetch_options() -> dict[str, float | int]:
    """Short timeouts and one quick retry keep the failure tests fast."""
    return {"timeout_s": 0.5, "retries": 1, "backoff_s": 0.01}


Listing = Callable[[Path], list[str]]


@pytest.fixture
def listing() -> Listing:
    """Everything under a folder, hidden temporary files included."""
    return lambda folder: sorted(path.name for path in folder.iterdir()) if folder.exists() else []
