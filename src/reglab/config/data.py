"""Schema of the `data` config group."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from reglab.config.checks import bounded

# The keys of `files` that preprocess reads. A data set without an official test
# split (scikit-learn's digits) names only the training pair and holds a test set out.
TRAIN_KEYS = ("train_images", "train_labels")
TEST_KEYS = ("test_images", "test_labels")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


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
    # Seeds the validation split and the training subset; its own key, so a
    # training seed (seeds) never changes which images a model sees.
    split_seed: int = bounded(42, ge=0)
    validation_size: int = bounded(2000, ge=1)
    # Small-data regime: 1,000 training images make the baseline overfit visibly
    # within the default 20 epochs. None: every official training image not used
    # for validation (experiment=full).
    train_size: int | None = bounded(1000, ge=1)
    # None: the whole official test set; a number takes a stratified subset (tiny runs).
    test_size: int | None = bounded(None, ge=1)
    # The largest raw pixel value: images are scaled by 1 / pixel_max into [0, 1].
    # IDX bytes run to 255; scikit-learn's digits to 16.
    pixel_max: float = bounded(255.0, gt=0)
    # Only for a data set with no official test split (no test_* files): how many
    # images a stratified split holds out as the test set, and the seed of that
    # split. The seed is its own so that changing `split_seed` never moves a test
    # image into training.
    test_holdout_size: int | None = bounded(None, ge=1)
    test_holdout_seed: int = bounded(0, ge=0)

    def validate(self) -> None:
        if len(self.image_shape) != 3 or any(side < 1 for side in self.image_shape):
            raise ValueError(
                f"image_shape={self.image_shape}: give [height, width, channels], each >= 1"
            )
        if not self.class_names:
            # Evaluation labels its per-class results and confusion matrix with them.
            raise ValueError(
                f"class_names=[]: give one name per class (num_classes={self.num_classes})"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes="
                f"{self.num_classes}; give one name per class"
            )
        for key, data_file in self.files.items():
            if not _SHA256.match(data_file.sha256):
                raise ValueError(
                    f"files.{key}.sha256={data_file.sha256!r}: "
                    "must be 64 lowercase hex digits (the SHA-256 of the decompressed file)"
                )
        if not self.files:
            return
        missing = [key for key in TRAIN_KEYS if key not in self.files]
        if missing:
            raise ValueError(f"files: missing {missing}; the training images and labels")
        test_keys = [key for key in TEST_KEYS if key in self.files]
        if len(test_keys) == 1:
            raise ValueError(f"files: has {test_keys[0]} alone; give both of {list(TEST_KEYS)}")
        if not test_keys and self.test_holdout_size is None:
            raise ValueError(
                "test_holdout_size: required when files has no official test split "
                f"({list(TEST_KEYS)}); set how many images to hold out as the test set"
            )
        if test_keys and self.test_holdout_size is not None:
            raise ValueError(
                f"test_holdout_size={self.test_holdout_size}: this data set has an official "
                "test split; remove test_holdout_size (use test_size for a subset)"
            )
