"""What a reader of the user's own data returns, and the digests that identify its files.

A user's image folder, CSV table or ``.npz`` file has no checksums in the config:
its shape, classes and files are known only once read. Each reader returns a
:class:`UserData`; the manifest of ``data/processed`` records one SHA-256 per
source file (relative path -> digest) and a digest of that listing, so processed
arrays made from another version of the files are refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reglab.core.digest import file_sha256
from reglab.core.io import writing_dir
from reglab.data.errors import DataError

# What the inputs are: uint8 pixels (NHWC), or float features (N, F).
IMAGES, FEATURES = "images", "features"


@dataclass(frozen=True)
class UserData:
    """Arrays read from the user's files, before splitting.

    ``splits`` holds "train" and, for an official split, "test": (inputs, int64
    labels). ``file_digests`` maps each source file's path relative to data.path
    (its name, for a single file) to its SHA-256.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: list[str]
    file_digests: dict[str, str]
    inputs: str = IMAGES
    # Per-column names of a table's features (empty for images and arrays).
    feature_names: list[str] = field(default_factory=list)


def listing_digest(file_digests: Mapping[str, str]) -> str:
    """One SHA-256 for a whole listing of relative path -> SHA-256 (sorted)."""
    text = json.dumps(dict(sorted(file_digests.items())), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def digests_of(root: Path, relative_paths: Sequence[str]) -> dict[str, str]:
    """SHA-256 of each file (relative to ``root``; ``root`` itself for a single file).

    Memoized per process on the files' sizes and modification times, so a search
    whose trials each check their data hashes a large image folder once.
    """
    stats = []
    for name in relative_paths:
        path = root / name if root.is_dir() else root
        stat = path.stat()
        stats.append((name, str(path), stat.st_size, stat.st_mtime_ns))
    return dict(_hashed(tuple(stats)))


@functools.lru_cache(maxsize=8)
def _hashed(stats: tuple[tuple[str, str, int, int], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name, file_sha256(path)) for name, path, _, _ in stats)


def check_class_names(found: Sequence[str], given: Sequence[str], where: str) -> list[str]:
    """The class names in their order: ``given`` (the config's) if any, else ``found``
    (in the order the reader sorted them: folder names as text, label values by value).

    ``given`` must name exactly the classes found in the data.
    """
    if not given:
        return list(found)
    if sorted(given) != sorted(found):
        raise DataError(
            f"data.class_names={list(given)} does not match the classes {list(found)} of "
            f"{where}; give exactly those names (in the order you want), or [] to use them sorted"
        )
    return list(given)


LOCAL_NOTE = "LOCAL_DATA.txt"


def note_local_source(destination: Path, data_format: str, path: Path) -> Path:
    """The download stage's output for the user's own data: nothing is fetched.

    preprocess reads data.path itself (a DVC dep of that stage, so only it re-runs
    when the files change); ``destination`` (paths.raw) gets one line saying so,
    the same for any data.path, so nothing re-runs for it.
    """
    if not path.exists():
        raise DataError(
            f"{path} (data.path): no such file or folder; give your "
            f"{data_format.replace('_', ' ')}'s location"
        )
    with writing_dir(destination) as staging:
        (staging / LOCAL_NOTE).write_text(
            f"data.format={data_format}: preprocess reads data.path directly; "
            "nothing is downloaded\n",
            encoding="utf-8",
        )
    return destination / LOCAL_NOTE
