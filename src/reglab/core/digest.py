"""Fingerprints and flattening: the one home for both.

A fingerprint says what something depends on (a config, a search, a checkpoint's
code and data); the same value always gives the same digest, in any process.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def digest(value: Any, length: int | None = None) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys; other objects as ``str``)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def tree_digest(folder: str | Path, pattern: str = "*.py") -> str:
    """SHA-256 over the relative names and contents of the files matching ``pattern``."""
    folder = Path(folder)
    sha = hashlib.sha256()
    for path in sorted(folder.rglob(pattern)):
        sha.update(str(path.relative_to(folder)).encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": leaf}``; an empty mapping is a leaf of its own."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
