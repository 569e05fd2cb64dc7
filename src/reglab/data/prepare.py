"""From verified raw IDX files to the train / validation / test arrays every later stage reads.

- The validation set is a stratified, seeded split of the official training set,
  and the optional training subset a stratified, seeded sample of what is left:
  the official test set never takes part in training or model selection.
- A data set with no official test split (scikit-learn's digits) has one held
  out first, by a stratified split with its own seed (``test_holdout_seed``),
  so changing ``split_seed`` never moves a test image into training.
- Each split keeps the original order of its images (the chosen indices are
  sorted): the split depends on the seed alone, not on how sampling walks.
- Images are stored as their uint8 pixels with a channel axis (NHWC), other
  inputs as float32; labels int64. The manifest's pixel_max scales them as they
  are read (:mod:`reglab.data.inputs`), never in the files.
- The output folder is written in a temporary sibling and swapped in whole,
  with a manifest whose checksums and split digests make the data a run used
  identifiable later (MLflow shows the digests as the run's inputs).
  Same config, same bytes: nothing in the output depends on time or host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reglab.config.data import TEST_KEYS, TRAIN_KEYS, USER_FORMATS, DataConfig, DataFile
from reglab.core.digest import file_sha256
from reglab.core.io import writing_dir
from reglab.data.errors import DataError, IdxFormatError
from reglab.data.idx import check_magic, parse_idx, read_content
from reglab.data.image_folder import read_image_folder
from reglab.data.image_folder import source_files as image_files
from reglab.data.inputs import STORED_DTYPES, ModelInputs, open_stored, stored_dtype
from reglab.data.npz import read_npz
from reglab.data.table import read_csv_table, standardize
from reglab.data.userdata import FEATURES, IMAGES, UserData, digests_of, listing_digest

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
# 2: images stored as uint8 pixels, scaled by pixel_max as they are read (1 stored
# float32 in [0, 1]; reading those as version 2 would divide them again).
MANIFEST_VERSION = 2

# Independent random streams per purpose, so that e.g. changing train_size does
# not change which images go to validation.
_HOLDOUT_STREAM, _VALIDATION_STREAM, _TRAIN_STREAM, _TEST_STREAM = range(4)

Split = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SplitPlan:
    """How to cut the raw data into train / val / test (see ``data`` in conf/)."""

    split_seed: int
    validation_size: int
    train_size: int | None = None
    test_size: int | None = None
    test_holdout_size: int | None = None
    test_holdout_seed: int = 0


def split_plan(data: DataConfig) -> SplitPlan:
    """The plan the data config asks for."""
    return SplitPlan(
        split_seed=data.split_seed,
        validation_size=data.validation_size,
        train_size=data.train_size,
        test_size=data.test_size,
        test_holdout_size=data.test_holdout_size,
        test_holdout_seed=data.test_holdout_seed,
    )


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def stratified_split(
    labels: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``size`` indices with the class proportions of ``labels``.

    Each class gets its share rounded by largest remainder (ties to the lower
    class), so every class proportion is within 1/size of the population's.
    Returns (chosen, rest), both sorted.
    """
    total = len(labels)
    if not 0 < size <= total:
        raise ValueError(f"cannot take {size} of {total} items")
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / total
    quotas = np.floor(exact).astype(np.int64)
    shortfall = size - int(quotas.sum())
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:shortfall]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(labels == label))[:quota]
        for label, quota in zip(classes, quotas, strict=True)
    ]
    picked = np.sort(np.concatenate(chosen))
    mask = np.zeros(total, dtype=bool)
    mask[picked] = True
    return picked, np.flatnonzero(~mask)


def read_raw(
    raw_dir: Path, files: Mapping[str, DataFile], image_shape: Sequence[int], num_classes: int
) -> dict[str, Split]:
    """Read and check the raw IDX files: {"train": (images, labels)[, "test": ...]}.

    Every file is checked against its SHA-256 in the config first, so a folder
    holding another data set's files of the same names is refused.
    """
    arrays: dict[str, np.ndarray] = {}
    for key, data_file in files.items():
        path = raw_dir / data_file.filename
        if not path.is_file():
            raise DataError(
                f"{path}: missing; run `python -m reglab.stages.download` (or `dvc repro`)"
            )
        content = read_content(path)
        actual = hashlib.sha256(content).hexdigest()
        if actual != data_file.sha256:
            raise DataError(
                f"{path}: content SHA-256 {actual[:16]}... is not data.files.{key}.sha256 "
                f"{data_file.sha256[:16]}...; run the download stage again"
            )
        array = parse_idx(content, str(path))
        check_magic(array, str(path), 3 if key.endswith("images") else 1)
        arrays[key] = array

    splits: dict[str, Split] = {}
    for name, (images_key, labels_key) in (("train", TRAIN_KEYS), ("test", TEST_KEYS)):
        if images_key not in arrays:
            continue
        images, labels = arrays[images_key], arrays[labels_key]
        images_path = raw_dir / files[images_key].filename
        labels_path = raw_dir / files[labels_key].filename
        if list(images.shape[1:]) != list(image_shape[:2]):
            raise IdxFormatError(
                f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, "
                f"data.image_shape says {image_shape[0]}x{image_shape[1]}"
            )
        if len(labels) != len(images):
            raise IdxFormatError(
                f"{labels_path}: {len(labels)} labels for the {len(images)} images in {images_path}"
            )
        if labels.size and int(labels.max()) >= num_classes:
            raise IdxFormatError(
                f"{labels_path}: label {int(labels.max())} is out of range for "
                f"data.num_classes={num_classes}"
            )
        splits[name] = (images, labels)
    return splits


def make_splits(raw: Mapping[str, Split], plan: SplitPlan) -> tuple[dict[str, Split], str]:
    """Cut train / val / test (still raw pixels); also say where the test set came from."""
    pool_images, pool_labels = raw["train"]
    if "test" in raw:
        test_images, test_labels = raw["test"]
        test_source = "the official test split"
    else:
        if plan.test_holdout_size is None:
            raise DataError(
                "data.test_holdout_size: required for a data set without an official test split"
            )
        _check_fits("data.test_holdout_size", plan.test_holdout_size, len(pool_labels) - 1)
        held_out, kept = stratified_split(
            pool_labels, plan.test_holdout_size, _rng(plan.test_holdout_seed, _HOLDOUT_STREAM)
        )
        test_images, test_labels = pool_images[held_out], pool_labels[held_out]
        pool_images, pool_labels = pool_images[kept], pool_labels[kept]
        test_source = (
            f"held out: a stratified split of {len(held_out)} of the "
            f"{len(held_out) + len(kept)} images with test_holdout_seed="
            f"{plan.test_holdout_seed} (the data set has no official test split)"
        )

    needed = plan.validation_size + (plan.train_size or 1)
    if needed > len(pool_labels):
        raise DataError(
            f"data.validation_size={plan.validation_size} plus data.train_size="
            f"{plan.train_size or 'at least 1'} need {needed} images, but the training "
            f"pool has {len(pool_labels)}; lower one of them"
        )
    validation, rest = stratified_split(
        pool_labels, plan.validation_size, _rng(plan.split_seed, _VALIDATION_STREAM)
    )
    if plan.train_size is not None and plan.train_size < len(rest):
        subset, _ = stratified_split(
            pool_labels[rest], plan.train_size, _rng(plan.split_seed, _TRAIN_STREAM)
        )
        rest = rest[subset]
    if plan.test_size is not None:
        _check_fits("data.test_size", plan.test_size, len(test_labels))
        if plan.test_size < len(test_labels):
            subset, _ = stratified_split(
                test_labels, plan.test_size, _rng(plan.split_seed, _TEST_STREAM)
            )
            test_images, test_labels = test_images[subset], test_labels[subset]
    splits = {
        "train": (pool_images[rest], pool_labels[rest]),
        "val": (pool_images[validation], pool_labels[validation]),
        "test": (test_images, test_labels),
    }
    return splits, test_source


def _check_fits(key: str, size: int, available: int) -> None:
    if size > available:
        raise DataError(f"{key}={size}: only {available} images are available; lower it")


def to_model_inputs(
    images: np.ndarray, labels: np.ndarray, image_shape: Sequence[int], pixel_max: float
) -> Split:
    """The arrays as stored: images with a channel axis (NHWC), and int64 labels.

    uint8 pixels stay uint8 (a quarter of float32's bytes); anything else, such
    as a feature table, becomes float32. Nothing is scaled here: the input
    pipeline divides by ``pixel_max`` (:func:`reglab.data.inputs.scale`), which the
    manifest records. Pixels (integer arrays) above ``pixel_max`` are refused;
    float features, standardized or not, are not pixels and pass.
    """
    pixels = np.issubdtype(images.dtype, np.integer)
    if pixels and images.size and float(images.max()) > pixel_max:
        raise DataError(
            f"pixel values reach {images.max()}, above data.pixel_max={pixel_max:g}; "
            "the config does not describe this data"
        )
    shaped = images.reshape(len(images), *image_shape)
    return shaped.astype(stored_dtype(shaped), copy=False), labels.astype(np.int64)


def preprocess(
    raw_dir: Path,
    output_dir: Path,
    *,
    name: str,
    data_format: str,
    files: Mapping[str, DataFile],
    image_shape: Sequence[int],
    num_classes: int | None,
    class_names: Sequence[str],
    pixel_max: float,
    plan: SplitPlan,
    image_size: Sequence[int] | None = None,
    color_mode: str | None = None,
    label_column: str | None = None,
) -> dict[str, Any]:
    """Read ``raw_dir``, split, scale, and write arrays plus manifest to ``output_dir``.

    ``raw_dir`` is data.path: the download's folder for the bundled sets, the
    user's image folder, CSV file or .npz file for ``data_format`` in USER_FORMATS
    (``image_size``, ``color_mode`` and ``label_column`` are for those). Returns
    the manifest.
    """
    started = time.perf_counter()
    if data_format in USER_FORMATS:
        user = read_user_data(
            data_format,
            raw_dir,
            image_size=image_size,
            color_mode=color_mode,
            label_column=label_column,
            num_classes=num_classes,
            class_names=class_names,
        )
        splits, description = prepare_user_data(
            user,
            raw_dir,
            name=name,
            data_format=data_format,
            image_shape=image_shape,
            pixel_max=pixel_max,
            plan=plan,
            options={
                "image_size": None if image_size is None else list(image_size),
                "color_mode": color_mode,
                "label_column": label_column,
            },
        )
        return _write(output_dir, splits, description, started)
    if num_classes is None:
        raise DataError(f"data.num_classes: required for data.format={data_format}")
    raw = read_raw(raw_dir, files, image_shape, num_classes)
    cut, test_source = make_splits(raw, plan)
    splits = {
        split: to_model_inputs(images, labels, image_shape, pixel_max)
        for split, (images, labels) in cut.items()
    }
    description = {
        "format_version": MANIFEST_VERSION,
        "dataset": name,
        "source": {
            "format": data_format,
            "files": {key: asdict(data_file) for key, data_file in sorted(files.items())},
            "test_split": test_source,
        },
        "split_seed": plan.split_seed,
        "split_plan": asdict(plan),
        "num_classes": num_classes,
        "class_names": list(class_names),
        "image_shape": list(image_shape),
        "scaling": f"float32(raw pixel) / {pixel_max:g}",
        "pixel_max": pixel_max,
    }
    return _write(output_dir, splits, description, started)


def _write(
    output_dir: Path, splits: Mapping[str, Split], description: Mapping[str, Any], started: float
) -> dict[str, Any]:
    manifest = write_processed(output_dir, splits, description, description["num_classes"])
    log.info(
        "%s: wrote %s into %s in %.1f s (test: %s)",
        description["dataset"],
        ", ".join(f"{split} {size}" for split, size in manifest["sizes"].items()),
        output_dir,
        time.perf_counter() - started,
        description["source"]["test_split"],
    )
    return manifest


def read_user_data(
    data_format: str,
    path: Path,
    *,
    image_size: Sequence[int] | None,
    color_mode: str | None,
    label_column: str | None,
    num_classes: int | None,
    class_names: Sequence[str],
) -> UserData:
    """Read the user's image folder, CSV file or .npz file (``data_format``) at ``path``."""
    if data_format == "image_folder":
        data = read_image_folder(
            path, image_size=image_size, color_mode=color_mode, class_names=class_names
        )
    elif data_format == "csv":
        if not label_column:
            raise DataError("data.label_column: required for data.format=csv; name the column")
        data = read_csv_table(path, label_column, class_names)
    elif data_format == "npz":
        data = read_npz(path, num_classes, class_names)
    else:
        raise DataError(f"data.format={data_format!r}: not one of {list(USER_FORMATS)}")
    if num_classes is not None and len(data.class_names) != num_classes:
        raise DataError(
            f"data.num_classes={num_classes}, but {path} has {len(data.class_names)} classes "
            f"{data.class_names}; set data.num_classes=null to take it from the data"
        )
    return data


def source_digests(data_format: str, path: Path) -> dict[str, str]:
    """SHA-256 of every source file of the user's data at ``path``, by relative path."""
    if data_format == "image_folder":
        return digests_of(path, image_files(path))
    if not path.is_file():
        raise DataError(f"{path}: no such file (data.path)")
    return digests_of(path, [path.name])


def prepare_user_data(
    user: UserData,
    path: Path,
    *,
    name: str,
    data_format: str,
    image_shape: Sequence[int],
    pixel_max: float,
    plan: SplitPlan,
    options: Mapping[str, Any],
) -> tuple[dict[str, Split], dict[str, Any]]:
    """Split the user's data (holding a test set out unless it has its own), standardize
    a table's features on the training split alone; the arrays and manifest entries."""
    shape = list(user.splits["train"][0].shape[1:])
    if image_shape and list(image_shape) != shape:
        raise DataError(
            f"data.image_shape={list(image_shape)}, but {path} gives inputs of shape {shape}; "
            "set data.image_shape=[] to take it from the data"
        )
    if user.inputs == FEATURES and pixel_max != 1:
        raise DataError(
            f"data.pixel_max={pixel_max:g}: {path} holds features, which are not scaled; "
            "set data.pixel_max=1"
        )
    if "test" in user.splits and plan.test_holdout_size is not None:
        raise DataError(
            f"data.test_holdout_size={plan.test_holdout_size}: {path} has its own train/ and "
            "test/ folders (an official test split); set data.test_holdout_size=null"
        )
    cut, test_source = make_splits(user.splits, plan)
    extra: dict[str, Any] = {}
    if data_format == "csv":
        cut, statistics = standardize(cut)
        extra["standardization"] = {
            "fitted_on": "train",
            "columns": user.feature_names,
            **statistics,
        }
    if user.inputs == IMAGES:
        for split, (images, _) in cut.items():
            if images.size and int(images.max()) > pixel_max:
                raise DataError(
                    f"data.pixel_max={pixel_max:g}, but the {split} images of {path} reach "
                    f"{int(images.max())}; set data.pixel_max to the largest pixel value"
                )
    splits = {
        split: (
            inputs if inputs.dtype == np.uint8 else inputs.astype(np.float32),
            labels.astype(np.int64),
        )
        for split, (inputs, labels) in cut.items()
    }
    description = {
        "format_version": MANIFEST_VERSION,
        "dataset": name,
        "source": {
            "format": data_format,
            "path": str(path),
            **options,
            "files": {},
            "file_count": len(user.file_digests),
            "files_digest": listing_digest(user.file_digests),
            "file_digests": dict(sorted(user.file_digests.items())),
            "test_split": test_source,
        },
        "split_seed": plan.split_seed,
        "split_plan": asdict(plan),
        "num_classes": len(user.class_names),
        "class_names": list(user.class_names),
        "inputs": user.inputs,
        "image_shape": shape,
        "scaling": (
            f"float32(raw pixel) / {pixel_max:g}"
            if user.inputs == IMAGES
            else "none (features as stored)"
        ),
        "pixel_max": float(pixel_max) if user.inputs == IMAGES else 1.0,
        **extra,
    }
    return splits, description


def write_processed(
    output_dir: Path,
    splits: Mapping[str, Split],
    description: Mapping[str, Any],
    num_classes: int,
) -> dict[str, Any]:
    """Write ``<split>_x.npy``, ``<split>_y.npy`` and the manifest; swap the folder in whole.

    The x arrays are written as :func:`to_model_inputs` gives them (uint8 pixels
    or float32 features); ``description`` must hold the ``pixel_max`` that turns
    them into model inputs.
    """
    if not float(description.get("pixel_max") or 0) > 0:
        raise ValueError(
            f"description: pixel_max={description.get('pixel_max')!r}; the manifest must say "
            "what the stored x arrays are divided by"
        )
    for split in SPLITS:
        dtype = np.asarray(splits[split][0][:0]).dtype
        if dtype.name not in STORED_DTYPES:
            raise ValueError(
                f"{split}_x: {dtype} arrays are not stored; to_model_inputs gives uint8 or float32"
            )
    with writing_dir(output_dir) as staging:
        arrays: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            for part, array in zip("xy", splits[split], strict=True):
                filename = f"{split}_{part}.npy"
                np.save(staging / filename, array, allow_pickle=False)
                arrays[filename] = {
                    "sha256": file_sha256(staging / filename),
                    "shape": list(array.shape),
                    "dtype": str(array.dtype),
                }
        manifest = {
            **description,
            "format_version": MANIFEST_VERSION,
            "sizes": {split: len(splits[split][1]) for split in SPLITS},
            "class_counts": {
                split: np.bincount(splits[split][1], minlength=num_classes).tolist()
                for split in SPLITS
            },
            "arrays": arrays,
            "model_input": "float32(x) / float32(pixel_max), in the input pipeline",
            # Short, as MLflow wants a dataset digest (its store keeps 36 characters).
            "digests": {
                split: hashlib.sha256(
                    (
                        arrays[f"{split}_x.npy"]["sha256"] + arrays[f"{split}_y.npy"]["sha256"]
                    ).encode()
                ).hexdigest()[:16]
                for split in SPLITS
            },
        }
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (staging / MANIFEST).write_text(text, encoding="utf-8")
    return manifest


def load_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest preprocess wrote into ``directory``."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{path}: missing; run `python -m reglab.stages.preprocess` (or `dvc repro`)"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    version = manifest.get("format_version")
    if version != MANIFEST_VERSION:
        raise DataError(
            f"{path}: format_version {version}, this version of reglab reads "
            f"{MANIFEST_VERSION} (uint8 pixels scaled as they are read); run "
            "`python -m reglab.stages.preprocess` (or `dvc repro`) again"
        )
    return manifest


# The source keys of the user's formats that change what preprocess writes.
_USER_SOURCE_KEYS = ("path", "image_size", "color_mode", "label_column")


def prepared_for(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The data keys a manifest's arrays were prepared with, named as in the config."""
    keys = {"data.name": manifest.get("dataset"), "data.pixel_max": manifest.get("pixel_max")}
    keys.update({f"data.{key}": value for key, value in manifest.get("split_plan", {}).items()})
    source = manifest.get("source", {})
    for key, entry in source.get("files", {}).items():
        keys[f"data.files.{key}.sha256"] = entry["sha256"]
    if source.get("format") in USER_FORMATS:
        keys["data.format"] = source["format"]
        keys.update({f"data.{key}": source.get(key) for key in _USER_SOURCE_KEYS})
    if manifest.get("class_names"):
        keys["data.class_names"] = list(manifest["class_names"])
    if manifest.get("num_classes") is not None:
        keys["data.num_classes"] = manifest["num_classes"]
    return keys


def described(data: DataConfig) -> dict[str, Any]:
    """The manifest entries that say which data config arrays were prepared for.

    The user's formats add their source keys; class names and the number of
    classes are there only when the config gives them (else the data says).
    """
    entries: dict[str, Any] = {
        "dataset": data.name,
        "pixel_max": data.pixel_max,
        "split_plan": asdict(split_plan(data)),
        "source": {"files": {key: asdict(entry) for key, entry in data.files.items()}},
    }
    if data.format in USER_FORMATS:
        entries["source"].update(
            format=data.format,
            path=str(Path(data.path)),
            image_size=None if data.image_size is None else list(data.image_size),
            color_mode=data.color_mode,
            label_column=data.label_column,
        )
    if data.class_names:
        entries["class_names"] = list(data.class_names)
    if data.num_classes is not None:
        entries["num_classes"] = data.num_classes
    return entries


def check_prepared(directory: Path, manifest: Mapping[str, Any], data: DataConfig) -> None:
    """Refuse arrays prepared for another data config, naming the first key that differs.

    A run's record must be true: a config that says all 58,000 images must not
    train on the 1,000 the default pipeline prepared.
    """
    wanted = prepared_for(described(data))
    found = prepared_for(manifest)
    for key, value in wanted.items():
        if found.get(key) != value:
            setting = f"{key}={_override(value)}"
            raise DataError(
                f"{directory} holds data prepared with {key}={_override(found.get(key))}, not "
                f"{setting}; prepare it for this config with `dvc exp run -S '{setting}'` "
                f"(or `make params && dvc repro preprocess` after changing conf/)"
            )
    if data.format in USER_FORMATS:
        _check_source_files(directory, manifest["source"], data.format, Path(data.path))


def _check_source_files(
    directory: Path, source: Mapping[str, Any], data_format: str, path: Path
) -> None:
    """The user's files must be those the arrays were made from, byte for byte."""
    if not path.exists():
        raise DataError(
            f"{path} (data.path): missing; {directory} was prepared from it, and the files are "
            "needed to check that they did not change"
        )
    current = source_digests(data_format, path)
    if listing_digest(current) == source.get("files_digest"):
        return
    before = source.get("file_digests", {})
    changed = sorted(
        name for name in set(current) | set(before) if current.get(name) != before.get(name)
    )
    first = changed[0]
    what = "added" if first not in before else "removed" if first not in current else "changed"
    raise DataError(
        f"{directory} was prepared from other files than {path} holds now ({len(changed)} "
        f"differ, e.g. {first}: {what}); run the preprocess stage again (`dvc repro preprocess`)"
    )


@dataclass(frozen=True)
class DatasetClasses:
    """The classes of the prepared data: label i is ``names[i]``."""

    names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def dataset_classes(processed_dir: str | Path, data: DataConfig) -> DatasetClasses:
    """The class names (and their number) of the data in ``processed_dir``.

    The manifest is the source: for the user's formats only the data knows them, and
    values the config gives must agree with it. Before any data is prepared, class
    names the config gives (the bundled sets always do) are the answer, so a model
    can be built for them.
    """
    given = data.class_names and data.num_classes in (None, len(data.class_names))
    if given and not (Path(processed_dir) / MANIFEST).is_file():
        return DatasetClasses([str(name) for name in data.class_names])
    manifest = load_manifest(processed_dir)
    names = [str(name) for name in manifest["class_names"]]
    if data.class_names and list(data.class_names) != names:
        raise DataError(
            f"{processed_dir} holds data with class_names={names}, not data.class_names="
            f"{list(data.class_names)}; run the preprocess stage again (`dvc repro preprocess`)"
        )
    if data.num_classes is not None and data.num_classes != len(names):
        raise DataError(
            f"{processed_dir} holds data with {len(names)} classes, not data.num_classes="
            f"{data.num_classes}; run the preprocess stage again (`dvc repro preprocess`)"
        )
    return DatasetClasses(names)


def _override(value: Any) -> str:
    """A value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def load_splits(
    directory: str | Path,
    data: DataConfig | None = None,
    *,
    verify: bool = True,
    splits: Sequence[str] = SPLITS,
    mmap_mode: str | None = "r",
) -> dict[str, tuple[ModelInputs, np.ndarray]]:
    """``splits`` (all by default: {"train": (x, y), "val": ..., "test": ...}) from a
    preprocess output folder.

    Each x is :class:`~reglab.data.inputs.ModelInputs` over the stored array,
    memory-mapped by default (``mmap_mode=None`` reads it into memory): slicing it
    gives scaled float32 model inputs, and nothing reads a whole split at once.
    The labels are memory-mapped too. With ``data``, the manifest must say the
    arrays were prepared for that data config (:func:`check_prepared`). With
    ``verify`` every array read is checked against the manifest's SHA-256 first
    (hashed in chunks, never read whole), so a stage never trains or evaluates on
    arrays that changed behind its back.
    """
    directory = Path(directory)
    manifest = load_manifest(directory)
    if data is not None:
        check_prepared(directory, manifest, data)
    if verify:
        wanted = {f"{split}_{part}.npy" for split in splits for part in "xy"}
        for filename, entry in manifest["arrays"].items():
            if filename not in wanted:
                continue
            path = directory / filename
            if not path.is_file():
                raise DataError(f"{path}: missing; run the preprocess stage again")
            if file_sha256(path) != entry["sha256"]:
                raise DataError(
                    f"{path}: SHA-256 differs from {directory / MANIFEST}; "
                    "run the preprocess stage again"
                )
    pixel_max = float(manifest["pixel_max"])
    return {
        split: (
            ModelInputs(open_stored(directory / f"{split}_x.npy", mmap_mode), pixel_max),
            open_stored(directory / f"{split}_y.npy", mmap_mode),
        )
        for split in splits
    }
