"""Stored uint8 pixels, memory-mapped and scaled as they are read: the same bits as the
float32 arrays preprocess used to write, the same batches, the same training."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from reglab.data import inputs
from reglab.data.errors import DataError
from reglab.data.inputs import ModelInputs, scale, scale_tensor
from reglab.data.prepare import load_manifest, load_splits, to_model_inputs, write_processed
from reglab.evaluate import evaluation
from reglab.train import fit as fit_module
from reglab.train.fit import (
    compile_model,
    epoch_batches,
    epoch_order,
    make_optimizer,
    seed_everything,
)
from tests.conftest import fit_digits

CLASSES = [str(digit) for digit in range(10)]


def old_scaling(images: np.ndarray, pixel_max: float) -> np.ndarray:
    """What preprocess stored before: float32 in [0, 1], scaled in place."""
    scaled = images.astype(np.float32)
    scaled /= np.float32(pixel_max)
    return scaled


def in_memory_batches(x, y, seed, epochs, batch_size, shuffle, num_classes=None):
    """The input pipeline as it was: the whole float32 array as a tensor, a gather a batch."""
    import tensorflow as tf

    orders = np.stack([epoch_order(len(x), seed, epoch, shuffle) for epoch in epochs])
    labels = np.eye(num_classes, dtype=np.float32)[y] if num_classes else y
    images, labels = tf.constant(x), tf.constant(labels)
    return (
        tf.data.Dataset.from_tensor_slices(orders.astype(np.int32))
        .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
        .map(lambda index: (tf.gather(images, index), tf.gather(labels, index)))
        .prefetch(tf.data.AUTOTUNE)
    )


@pytest.fixture(scope="module")
def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from reglab.data.digits import load_digits_arrays

    raw = load_digits_arrays()
    return raw["train_images"], raw["train_labels"]


@pytest.fixture(scope="module")
def processed(digits_raw, tmp_path_factory) -> Path:
    """The digits written by write_processed: train 1,000 (not a multiple of 64), val 400."""
    images, labels = digits_raw
    order = np.random.default_rng(0).permutation(len(images))
    images, labels = images[order], labels[order]
    cuts = {"train": slice(0, 1000), "val": slice(1000, 1400), "test": slice(1400, None)}
    splits = {
        split: to_model_inputs(images[cut], labels[cut], [8, 8, 1], 16.0)
        for split, cut in cuts.items()
    }
    folder = tmp_path_factory.mktemp("streaming") / "processed"
    write_processed(folder, splits, {"dataset": "digits", "pixel_max": 16.0}, num_classes=10)
    return folder


def test_scaling_gives_the_bits_of_the_old_float32_arrays():
    import tensorflow as tf

    every_pixel = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for pixel_max in (255.0, 16.0, 1.0, 7.0, 100.0):
        old = old_scaling(every_pixel, pixel_max).tobytes()
        assert scale(every_pixel, pixel_max).tobytes() == old
        pipeline = tf.data.Dataset.from_tensors(every_pixel).map(
            lambda x, pixel_max=pixel_max: scale_tensor(x, pixel_max)
        )
        assert next(iter(pipeline)).numpy().tobytes() == old
    # Float features (a table, pixel_max 1.0) pass unchanged.
    features = np.random.default_rng(1).normal(size=(50, 7)).astype(np.float32)
    assert scale(features, 1.0).tobytes() == features.tobytes()
    assert scale_tensor(features, 1.0).numpy().tobytes() == features.tobytes()


def test_processed_images_are_uint8_and_float_features_float32(processed, digits_raw, tmp_path):
    manifest = load_manifest(processed)
    assert manifest["pixel_max"] == 16.0 and manifest["format_version"] == 2
    assert manifest["arrays"]["train_x.npy"] == {
        **manifest["arrays"]["train_x.npy"],
        "dtype": "uint8",
        "shape": [1000, 8, 8, 1],
    }
    assert np.load(processed / "test_x.npy").dtype == np.uint8
    splits = load_splits(processed)
    for split, size in (("train", 1000), ("val", 400), ("test", 397)):
        x, y = splits[split]
        assert isinstance(x.stored, np.memmap) and isinstance(y, np.memmap)
        assert x.stored.dtype == np.uint8 and x.shape == (size, 8, 8, 1) and len(y) == size
    train_x = splits["train"][0]
    assert int(train_x.stored.max()) == 16
    assert train_x[:].tobytes() == old_scaling(np.asarray(train_x.stored), 16.0).tobytes()
    in_memory = load_splits(processed, mmap_mode=None)["train"][0]
    assert not isinstance(in_memory.stored, np.memmap)
    assert in_memory[:].tobytes() == train_x[:].tobytes()

    features = np.random.default_rng(2).normal(size=(30, 5))  # float64, as read from a CSV
    stored, labels = to_model_inputs(features, np.arange(30) % 3, [5], 1.0)
    assert stored.dtype == np.float32 and labels.dtype == np.int64
    write_processed(
        tmp_path / "table",
        {split: (stored, labels) for split in ("train", "val", "test")},
        {"dataset": "table", "pixel_max": 1.0},
        num_classes=3,
    )
    table = load_splits(tmp_path / "table")["train"][0]
    assert load_manifest(tmp_path / "table")["arrays"]["train_x.npy"]["dtype"] == "float32"
    assert table[:].tobytes() == features.astype(np.float32).tobytes()


def test_a_manifest_without_pixel_max_or_of_the_old_format_is_refused(processed, tmp_path):
    split = (np.zeros((2, 8, 8, 1), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="pixel_max=None"):
        write_processed(tmp_path / "x", dict.fromkeys(("train", "val", "test"), split), {}, 10)
    old = tmp_path / "old"
    old.mkdir()
    text = (
        (processed / "manifest.json")
        .read_text()
        .replace('"format_version": 2', '"format_version": 1')
    )
    (old / "manifest.json").write_text(text)
    with pytest.raises(DataError, match="format_version 1, this version of reglab reads 2"):
        load_splits(old)


def test_the_streamed_batches_are_epoch_orders_with_the_old_values(processed):
    x, y = load_splits(processed)["train"]
    old_x = old_scaling(np.asarray(x.stored), 16.0)
    index_of = np.arange(len(x))  # gathered in place of the labels: each row's index
    streamed = list(
        epoch_batches(x, index_of, seed=3, epochs=range(1, 4), batch_size=64, shuffle=True)
    )
    per_epoch = math.ceil(1000 / 64)
    assert len(streamed) == 3 * per_epoch
    assert [len(bx) for bx, _ in streamed[:per_epoch]] == [64] * 15 + [1000 - 15 * 64]
    for epoch, first in zip(range(1, 4), range(0, len(streamed), per_epoch), strict=True):
        chunk = streamed[first : first + per_epoch]
        seen = np.concatenate([by.numpy() for _, by in chunk])
        np.testing.assert_array_equal(seen, epoch_order(1000, 3, epoch, True))
        for bx, by in chunk:
            assert bx.dtype.name == "float32"
            assert bx.numpy().tobytes() == old_x[by.numpy()].tobytes()
    reference = in_memory_batches(old_x, np.asarray(y), 3, range(1, 4), 64, True, 10)
    one_hot = epoch_batches(x, y, 3, range(1, 4), 64, True, num_classes=10)
    for (new_x, new_y), (ref_x, ref_y) in zip(one_hot, reference, strict=True):
        assert new_x.numpy().tobytes() == ref_x.numpy().tobytes()
        assert new_y.numpy().tobytes() == ref_y.numpy().tobytes()


def small_cnn() -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(6, 3, padding="same", activation="relu",
                                kernel_regularizer=keras.regularizers.L2(1e-3)),
            keras.layers.Dropout(0.2),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )  # fmt: skip


def trained(splits, seed=5):
    seed_everything(seed)
    model = small_cnn()
    compile_model(model, make_optimizer("adam", 1e-3))
    state = fit_digits(model, splits, seed=seed, label="s", epochs=2, train_probe_size=300)
    return state.history, [weight.tobytes() for weight in model.get_weights()], model


def test_training_on_the_memory_map_is_bit_identical_to_training_in_memory(processed, monkeypatch):
    streamed = load_splits(processed)
    streamed_history, streamed_weights, _ = trained(streamed)
    in_memory = {
        split: (old_scaling(np.asarray(x.stored), 16.0), np.asarray(y))
        for split, (x, y) in streamed.items()
    }
    monkeypatch.setattr(fit_module, "epoch_batches", in_memory_batches)
    history, weights, _ = trained(in_memory)
    assert len(history) == 2
    assert streamed_history == history
    assert streamed_weights == weights


def test_evaluation_over_a_memory_map_in_batches_equals_it_in_memory(processed):
    splits = load_splits(processed)
    _, _, model = trained(splits, seed=2)
    test_x, test_y = splits["test"]
    in_memory = old_scaling(np.asarray(test_x.stored), 16.0)
    batched = evaluation.predict_logits(model, test_x, batch_size=64)  # 397: a short last batch
    whole = np.asarray(model.predict(in_memory, batch_size=64, verbose=0), dtype=np.float64)
    assert batched.shape == (397, 10) and batched.tobytes() == whole.tobytes()
    options = {"class_names": CLASSES, "batch_size": 64, "calibration_bins": 10,
               "sparsity_threshold": 1e-3}  # fmt: skip
    on_map = evaluation.evaluate_model(model, splits["test"], splits["train"], **options)
    train_x, train_y = splits["train"]
    on_arrays = evaluation.evaluate_model(
        model,
        (in_memory, np.asarray(test_y)),
        (old_scaling(np.asarray(train_x.stored), 16.0), np.asarray(train_y)),
        **options,
    )
    assert on_map.report == on_arrays.report
    assert on_map.report["test_samples"] == 397
    np.testing.assert_array_equal(on_map.test_predicted, whole.argmax(axis=1))


def resident_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile in /proc/self/status")


def test_reading_a_memory_map_keeps_its_pages_out_of_the_process(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, size=(4096, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", data)  # 48 MiB
    x = ModelInputs(np.load(tmp_path / "x.npy", mmap_mode="r"), 255.0)
    keys = [slice(10, 900), slice(-7, None), 5, -1, [3, 0, -2], slice(0, 50, 7), slice(0, 0)]
    for key in keys:
        taken, expected = x.take(key), data[key]
        assert taken.shape == expected.shape and taken.tobytes() == expected.tobytes(), key
    with pytest.raises(IndexError):
        x.take([0, 4096])
    before = resident_file_kib()
    peak = before
    for epoch in range(2):  # every row, in random batches, as an epoch reads them
        for index in np.array_split(np.random.default_rng(epoch).permutation(4096), 32):
            assert x.take(index).tobytes() == data[index].tobytes()
            peak = max(peak, resident_file_kib())
    for batch in x.batches(512):
        assert batch.dtype == np.float32
        peak = max(peak, resident_file_kib())
    assert peak - before < 4 << 10  # KiB: far below the 48 MiB read
    del data
    x.take((slice(0, 4096), 0))  # a key read through the map itself, released after
    assert resident_file_kib() - before < 8 << 10
    np.asarray(x.stored).sum()  # the whole map read without releasing: all 48 MiB resident
    assert resident_file_kib() - before > 40 << 10
    x.release()
    assert resident_file_kib() - before < 4 << 10


def test_model_inputs_refuse_to_become_one_array(processed):
    x = load_splits(processed)["val"][0]
    with pytest.raises(TypeError, match="read in slices or batches"):
        np.asarray(x)
    with pytest.raises(ValueError, match="not a model input"):
        inputs.as_inputs(np.zeros((2, 3), np.uint8))
