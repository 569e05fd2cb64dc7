"""Preprocessing: stratified seeded splits, an untouched test set, deterministic bytes, manifest."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from reglab.config.data import DataFile
from reglab.data.errors import DataError, IdxFormatError
from reglab.data.idx import encode_idx, write_idx
from reglab.data.prepare import (
    SplitPlan,
    load_manifest,
    load_splits,
    make_splits,
    preprocess,
    read_raw,
    stratified_split,
)
from reglab.data.sources import fetch_files

SIDE = 4
SHAPE = [SIDE, SIDE, 1]
CLASS_NAMES = [f"class {label}" for label in range(10)]
PROJECT = Path(__file__).resolve().parents[2]


def _run(synthetic, output: Path, plan: SplitPlan) -> dict:
    return preprocess(
        synthetic.folder,
        output,
        name="synthetic",
        data_format="idx",
        files=synthetic.files,
        image_shape=SHAPE,
        num_classes=10,
        class_names=CLASS_NAMES,
        pixel_max=255.0,
        plan=plan,
    )


def _proportions(labels: np.ndarray) -> np.ndarray:
    return np.bincount(labels, minlength=10) / len(labels)


def _rows(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


@pytest.mark.parametrize("size", [50, 137, 600, 1199])
def test_stratified_split_keeps_class_proportions_within_one_percent(size: int):
    labels = np.random.default_rng(3).choice(10, size=1200, p=np.arange(1, 11) / 55)
    chosen, rest = stratified_split(labels, size, np.random.default_rng(0))

    assert len(chosen) == size
    assert len(rest) == 1200 - size
    assert np.array_equal(np.sort(np.concatenate([chosen, rest])), np.arange(1200))
    assert np.all(np.diff(chosen) > 0)  # sorted, no repeats
    gap = np.abs(_proportions(labels[chosen]) - _proportions(labels)).max()
    assert gap <= 0.01 or gap <= 1 / size
    if size >= 137:
        assert gap <= 0.01


def test_splits_are_stratified_disjoint_and_leave_the_official_test_set_alone(synthetic):
    raw = read_raw(synthetic.folder, synthetic.files, SHAPE, 10)
    splits, test_source = make_splits(
        raw, SplitPlan(split_seed=7, validation_size=200, train_size=500)
    )

    assert test_source == "the official test split"
    train_x, train_y = splits["train"]
    val_x, val_y = splits["val"]
    test_x, test_y = splits["test"]
    assert (len(train_y), len(val_y), len(test_y)) == (500, 200, 400)
    np.testing.assert_array_equal(test_x, synthetic.arrays["test_images"])
    np.testing.assert_array_equal(test_y, synthetic.arrays["test_labels"])
    assert not _rows(test_x) & (_rows(train_x) | _rows(val_x))
    assert not _rows(train_x) & _rows(val_x)
    population = _proportions(synthetic.arrays["train_labels"])
    for labels in (train_y, val_y):
        assert np.abs(_proportions(labels) - population).max() <= 0.01


def test_a_test_subset_is_stratified_and_drawn_from_the_test_set_only(synthetic):
    raw = read_raw(synthetic.folder, synthetic.files, SHAPE, 10)
    splits, _ = make_splits(raw, SplitPlan(split_seed=1, validation_size=100, test_size=150))
    test_x, test_y = splits["test"]
    assert len(test_y) == 150
    assert _rows(test_x) <= _rows(synthetic.arrays["test_images"])
    population = _proportions(synthetic.arrays["test_labels"])
    assert np.abs(_proportions(test_y) - population).max() <= 0.01


def test_validation_does_not_move_when_only_the_training_subset_changes(synthetic):
    raw = read_raw(synthetic.folder, synthetic.files, SHAPE, 10)
    small, _ = make_splits(raw, SplitPlan(split_seed=5, validation_size=200, train_size=300))
    large, _ = make_splits(raw, SplitPlan(split_seed=5, validation_size=200, train_size=900))
    np.testing.assert_array_equal(small["val"][0], large["val"][0])


def test_same_config_gives_byte_identical_outputs_and_another_seed_another_split(
    synthetic, tmp_path
):
    plan = SplitPlan(split_seed=42, validation_size=200, train_size=600)
    first = _run(synthetic, tmp_path / "first", plan)
    second = _run(synthetic, tmp_path / "second", plan)
    names = sorted(path.name for path in (tmp_path / "first").iterdir())
    assert names == [
        "manifest.json", "test_x.npy", "test_y.npy", "train_x.npy", "train_y.npy",
        "val_x.npy", "val_y.npy",
    ]  # fmt: skip
    for name in names:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()
    assert first == second

    reseeded = _run(synthetic, tmp_path / "reseeded", replace(plan, split_seed=43))
    assert reseeded["digests"]["val"] != first["digests"]["val"]
    assert reseeded["digests"]["train"] != first["digests"]["train"]
    assert reseeded["digests"]["test"] == first["digests"]["test"]
    first_val = load_splits(tmp_path / "first")["val"][0]
    reseeded_val = load_splits(tmp_path / "reseeded")["val"][0]
    assert len(_rows(first_val) ^ _rows(reseeded_val)) > 100


def test_arrays_and_manifest_hold_what_training_needs(synthetic, tmp_path):
    output = tmp_path / "processed"
    manifest = _run(synthetic, output, SplitPlan(split_seed=3, validation_size=200, train_size=500))
    splits = load_splits(output)

    train_x, train_y = splits["train"]
    # Stored as the raw uint8 pixels, memory-mapped; read as float32 / pixel_max.
    assert isinstance(train_x.stored, np.memmap) and train_x.stored.dtype == np.uint8
    assert train_x.shape == (500, SIDE, SIDE, 1) and train_x.pixel_max == 255.0
    assert train_y.dtype == np.int64 and train_y.shape == (500,)
    # The first three pixels spell each image's serial number in the raw file:
    # every processed image is its raw image, and reads as it scaled by exactly 1/255.
    digits = train_x.stored[:, 0, :3, 0].astype(np.int64)
    serials = digits[:, 0] + 256 * digits[:, 1] + 65536 * digits[:, 2]
    raw_train = synthetic.arrays["train_images"][serials]
    np.testing.assert_array_equal(train_x.stored[..., 0], raw_train)
    scaled = train_x[:]
    assert scaled.dtype == np.float32
    assert scaled[..., 0].tobytes() == (raw_train.astype(np.float32) / np.float32(255)).tobytes()
    np.testing.assert_array_equal(train_y, synthetic.arrays["train_labels"][serials])
    assert np.all(np.diff(serials) > 0)  # original order kept

    assert manifest == load_manifest(output)
    assert manifest["dataset"] == "synthetic"
    assert manifest["split_seed"] == 3
    assert manifest["split_plan"] == {
        "split_seed": 3,
        "validation_size": 200,
        "train_size": 500,
        "test_size": None,
        "test_holdout_size": None,
        "test_holdout_seed": 0,
    }
    assert manifest["class_names"] == CLASS_NAMES
    assert manifest["image_shape"] == SHAPE
    assert manifest["sizes"] == {"train": 500, "val": 200, "test": 400}
    for split, (_, labels) in splits.items():
        assert manifest["class_counts"][split] == np.bincount(labels, minlength=10).tolist()
    assert (
        manifest["class_counts"]["test"]
        == np.bincount(synthetic.arrays["test_labels"], minlength=10).tolist()
    )
    assert manifest["pixel_max"] == 255 and manifest["format_version"] == 2
    assert manifest["arrays"]["train_x.npy"]["dtype"] == "uint8"
    assert manifest["arrays"]["train_x.npy"]["shape"] == [500, SIDE, SIDE, 1]
    assert manifest["arrays"]["train_y.npy"]["dtype"] == "int64"
    for name, entry in manifest["arrays"].items():
        assert entry["sha256"] == hashlib.sha256((output / name).read_bytes()).hexdigest()
    x_sha = manifest["arrays"]["val_x.npy"]["sha256"]
    y_sha = manifest["arrays"]["val_y.npy"]["sha256"]
    assert manifest["digests"]["val"] == hashlib.sha256((x_sha + y_sha).encode()).hexdigest()[:16]
    assert manifest["source"]["files"]["train_images"] == {
        "filename": "train-images-idx3-ubyte.gz",
        "sha256": synthetic.files["train_images"].sha256,
    }
    assert json.loads((output / "manifest.json").read_text()) == manifest


def test_output_folder_is_replaced_whole_with_no_leftovers(synthetic, tmp_path):
    output = tmp_path / "processed"
    output.mkdir()
    (output / "stale.npy").write_bytes(b"old")
    _run(synthetic, output, SplitPlan(split_seed=0, validation_size=100))
    assert not (output / "stale.npy").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["processed", "source"]


def test_tampered_arrays_are_refused(synthetic, tmp_path):
    output = tmp_path / "processed"
    _run(synthetic, output, SplitPlan(split_seed=0, validation_size=100))
    array = np.load(output / "val_y.npy")
    array[0] = (array[0] + 1) % 10
    np.save(output / "val_y.npy", array)
    with pytest.raises(DataError, match=r"val_y.npy: SHA-256 differs from .*manifest.json; run"):
        load_splits(output)
    assert len(load_splits(output, verify=False)["val"][1]) == 100


def test_held_out_test_set_depends_on_its_own_seed_only(synthetic):
    raw = {"train": (synthetic.arrays["train_images"], synthetic.arrays["train_labels"])}
    plan = SplitPlan(split_seed=1, validation_size=100, test_holdout_size=240, test_holdout_seed=9)
    splits, source = make_splits(raw, plan)
    reseeded, _ = make_splits(raw, replace(plan, split_seed=2))

    assert source == (
        "held out: a stratified split of 240 of the 1200 images with test_holdout_seed=9 "
        "(the data set has no official test split)"
    )
    np.testing.assert_array_equal(splits["test"][0], reseeded["test"][0])
    assert not np.array_equal(splits["val"][0], reseeded["val"][0])
    assert (len(splits["train"][1]), len(splits["val"][1]), len(splits["test"][1])) == (
        860,
        100,
        240,
    )
    held_out = _rows(splits["test"][0])
    assert not held_out & (_rows(splits["train"][0]) | _rows(splits["val"][0]))
    population = _proportions(synthetic.arrays["train_labels"])
    assert np.abs(_proportions(splits["test"][1]) - population).max() <= 0.01


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (
            SplitPlan(split_seed=0, validation_size=1000, train_size=300),
            "data.validation_size=1000 plus data.train_size=300 need 1300 images, but the "
            "training pool has 1200; lower one of them",
        ),
        (
            SplitPlan(split_seed=0, validation_size=1200),
            "data.validation_size=1200 plus data.train_size=at least 1 need 1201 images",
        ),
        (
            SplitPlan(split_seed=0, validation_size=10, test_size=401),
            "data.test_size=401: only 400 images are available; lower it",
        ),
    ],
)
def test_sizes_that_do_not_fit_are_one_clear_error(synthetic, plan, message):
    raw = read_raw(synthetic.folder, synthetic.files, SHAPE, 10)
    with pytest.raises(DataError) as caught:
        make_splits(raw, plan)
    assert str(caught.value).startswith(message)


def test_raw_files_that_do_not_match_the_config_are_refused(synthetic, tmp_path):
    files = dict(synthetic.files)
    folder = synthetic.folder
    with pytest.raises(DataError, match=r"missing; run `python -m reglab.stages.download`"):
        read_raw(tmp_path / "empty", files, SHAPE, 10)

    wrong = DataFile(files["train_labels"].filename, "0" * 64)
    mismatch = r"train-labels-idx1-ubyte.gz: content SHA-256 [0-9a-f]{16}"
    with pytest.raises(DataError, match=mismatch):
        read_raw(folder, {**files, "train_labels": wrong}, SHAPE, 10)

    with pytest.raises(IdxFormatError, match=r"images are 4x4, data.image_shape says 28x28"):
        read_raw(folder, files, [28, 28, 1], 10)

    with pytest.raises(IdxFormatError, match=r"label 9 is out of range for data.num_classes=5"):
        read_raw(folder, files, SHAPE, 5)

    short = synthetic.arrays["train_labels"][:-1]
    write_idx(folder / "short-labels.gz", short)
    short_file = DataFile("short-labels.gz", hashlib.sha256(encode_idx(short)).hexdigest())
    with pytest.raises(IdxFormatError, match=r"short-labels.gz: 1199 labels for the 1200 images"):
        read_raw(folder, {**files, "train_labels": short_file}, SHAPE, 10)


def test_mlflow_inputs_carry_the_manifest_digests_and_contexts(synthetic, tmp_path):
    output = tmp_path / "processed"
    manifest = _run(synthetic, output, SplitPlan(split_seed=0, validation_size=100, train_size=300))

    from reglab.tracking import data_inputs

    inputs = data_inputs(output)

    assert [(dataset.name, dataset.digest, context) for dataset, context in inputs] == [
        ("synthetic-train", manifest["digests"]["train"], "training"),
        ("synthetic-val", manifest["digests"]["val"], "validation"),
        ("synthetic-test", manifest["digests"]["test"], "testing"),
    ]
    train = inputs[0][0]
    assert train.profile["features_shape"] == (300, SIDE, SIDE, 1)
    assert train.profile["targets_shape"] == (300,)
    assert json.loads(train.to_dict()["source"]) == {"uri": output.resolve().as_uri()}


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_the_debian_mirror(tmp_path):
    from reglab.config.compose import compose_config

    data = compose_config(["data=fashion_mnist"]).data
    files = data.files
    raw = tmp_path / "raw"
    fetch_files(files, [str(FASHION)], raw, timeout_s=5, retries=0, backoff_s=0)

    started = time.perf_counter()
    manifest = preprocess(
        raw,
        tmp_path / "processed",
        name="fashion_mnist",
        data_format="idx",
        files=files,
        image_shape=data.image_shape,
        num_classes=10,
        class_names=data.class_names,
        pixel_max=255.0,
        plan=SplitPlan(split_seed=42, validation_size=5000),
    )
    elapsed = time.perf_counter() - started

    assert manifest["sizes"] == {"train": 55000, "val": 5000, "test": 10000}
    assert manifest["class_counts"]["train"] == [5500] * 10
    assert manifest["class_counts"]["val"] == [500] * 10
    assert manifest["class_counts"]["test"] == [1000] * 10
    assert manifest["class_names"][9] == "Ankle boot"
    # The budget is 5 s on an idle machine; the slack absorbs a busy shared CPU.
    assert elapsed < 15, f"preprocessing full Fashion-MNIST took {elapsed:.1f} s"
