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

# Formats whose files ship with the project's config (checksums in conf/data/),
# and the user's own, whose shape, classes and digests are known only once read.
BUNDLED_FORMATS = ("idx", "sklearn_digits")
USER_FORMATS = ("image_folder", "csv", "npz")
COLOR_MODES = ("grayscale", "rgb")


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
    format: str = bounded("idx", choices=[*BUNDLED_FORMATS, *USER_FORMATS])
    # Where preprocess reads the source: the download stage's folder for the bundled
    # sets (their files in conf/data/ say `path: ${paths.raw}`); the user's image
    # folder, CSV file or .npz file otherwise. A DVC dep of preprocess, so editing,
    # adding or removing a file there re-runs it. "???": OmegaConf's mandatory value,
    # refused by the check stage before DVC touches anything.
    path: str = "???"
    # [height, width, channels] of the bundled sets. The user's formats leave it []:
    # the manifest of data/processed says what was read ([F] for a table's features);
    # a value given there must agree with the data.
    image_shape: list[int] = field(default_factory=lambda: [28, 28, 1])
    # null for the user's formats: the number of classes found in the data.
    num_classes: int | None = bounded(10, ge=2)
    # [] for the user's formats: the sorted class folders or label values; given,
    # they fix the order (label i is class_names[i]) and must match the data.
    class_names: list[str] = field(default_factory=list)
    # image_folder only: resize every image to [height, width] (Pillow, bilinear);
    # null keeps the size, which must then be the same for every image.
    image_size: list[int] | None = None
    # image_folder only: convert every image to grayscale or rgb; null keeps each
    # image's own channels, which must then agree across the folder.
    color_mode: str | None = bounded(None, choices=list(COLOR_MODES))
    # csv only: the column holding the class of each row.
    label_column: str | None = None
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
        if self.format in USER_FORMATS:
            self._validate_user_format()
            return
        for key in ("image_size", "color_mode", "label_column"):
            if getattr(self, key) is not None:
                raise ValueError(
                    f"{key}={getattr(self, key)!r}: only for the user's formats "
                    f"{list(USER_FORMATS)}, not format={self.format}; remove it"
                )
        if self.num_classes is None:
            raise ValueError(f"num_classes=None: give the number of classes of {self.name}")
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

    def _validate_user_format(self) -> None:
        """The user's image folder, table or arrays: what can be checked before reading."""
        if self.path in ("", "???"):
            raise ValueError(
                f"path: required for format={self.format}; set data.path to the "
                + {
                    "image_folder": "folder with one subfolder per class",
                    "csv": "CSV file",
                    "npz": ".npz file with arrays x and y",
                }[self.format]
            )
        if self.files:
            raise ValueError(
                f"files: {sorted(self.files)} are for the bundled sets; format={self.format} "
                "reads data.path (compose data=<format> instead of overriding data.format)"
            )
        if self.image_shape and (
            len(self.image_shape) not in (1, 3) or any(side < 1 for side in self.image_shape)
        ):
            raise ValueError(
                f"image_shape={self.image_shape}: leave it [] (taken from the data), or give "
                "[height, width, channels] or [features]"
            )
        if self.image_size is not None:
            if self.format != "image_folder":
                raise ValueError(
                    f"image_size={self.image_size}: only for format=image_folder; remove it"
                )
            if len(self.image_size) != 2 or any(side < 1 for side in self.image_size):
                raise ValueError(
                    f"image_size={self.image_size}: give [height, width], each >= 1, or null"
                )
        if self.color_mode is not None and self.format != "image_folder":
            raise ValueError(
                f"color_mode={self.color_mode!r}: only for format=image_folder; remove it"
            )
        if self.format == "csv":
            if not self.label_column:
                raise ValueError(
                    "label_column: required for format=csv; name the column holding the classes"
                )
            if self.pixel_max != 1:
                raise ValueError(
                    f"pixel_max={self.pixel_max:g}: a table's features are standardized, "
                    "not scaled; set data.pixel_max=1"
                )
        elif self.label_column is not None:
            raise ValueError(f"label_column={self.label_column!r}: only for format=csv; remove it")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names={self.class_names}: the names must be distinct")
        if (
            self.class_names
            and self.num_classes is not None
            and len(self.class_names) != self.num_classes
        ):
            raise ValueError(
                f"class_names has {len(self.class_names)} names but num_classes="
                f"{self.num_classes}; give one name per class (or leave num_classes null)"
            )
        if len(self.class_names) == 1:
            raise ValueError(
                f"class_names={self.class_names}: a classifier needs at least 2 classes"
            )

    def check_source(self, raw_dir: str) -> None:
        """The bundled sets are read where the download stage puts them."""
        if self.format in BUNDLED_FORMATS and self.path != raw_dir:
            raise ValueError(
                f"path={self.path!r}: format={self.format} is read from the download "
                f"stage's folder paths.raw={raw_dir!r}; remove data.path, or compose "
                f"data=image_folder, data=csv or data=npz for your own data"
            )
