"""Schema of the `data` config group."""

from __future__ import annotations

from dataclasses import dataclass, field

from reglab.schema import bounded


@dataclass
class DataFile:
    filename: str
    # SHA-256 of the decompressed content: every mirror is checked by the same
    # fingerprint whatever its gzip headers.
    sha256: str


@dataclass
class DownloadConfig:
    timeout_s: float = bounded(30.0, gt=0)
    retries: int = bounded(3, ge=0)
    backoff_s: float = bounded(1.0, ge=0)


@dataclass
class DataConfig:
    name: str = "fashion_mnist"
    format: str = bounded("idx", choices=["idx", "sklearn_digits"])
    image_shape: list[int] = field(default_factory=lambda: [28, 28, 1])
    num_classes: int = bounded(10, ge=2)
    class_names: list[str] = field(default_factory=list)
    files: dict[str, DataFile] = field(default_factory=dict)
    mirrors: list[str] = field(default_factory=list)
    extra_mirrors: list[str] = field(default_factory=list)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    validation_size: int = bounded(5000, ge=1)
    # None: every official training image not used for validation.
    train_size: int | None = bounded(None, ge=1)
    # None: the whole official test set; a number takes a stratified subset (tiny runs).
    test_size: int | None = bounded(None, ge=1)
