"""Build a keras.Model from the model config and a regularizer recipe.

Three architectures, chosen by ``conf/model/*.yaml``:

- ``cnn`` (default): Conv2D(32) -> MaxPool -> Conv2D(64) -> MaxPool -> Flatten
  -> Dense(128) -> Dense(classes).
- ``tutorial_cnn``: the small two-conv network of the Keras / TensorFlow
  tutorials: the same conv blocks, no hidden Dense layer, dropout before the
  classifier.
- ``mlp``: Flatten -> Dense(512) -> Dense(512) -> Dense(classes), the dense
  networks of the overfitting and dropout examples.

Every model returns logits (no softmax): the loss is computed ``from_logits``.
Layer names are stable (``conv_1``, ``dense_1``, ``logits``, ...) because
metrics and histograms are logged per layer name.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from reglab.config.checks import ConfigError
from reglab.config.recipes import ACTIVATIONS, MODEL_NAMES, ModelConfig  # noqa: F401
from reglab.core.io import WriteError, write_atomic
from reglab.model.regularizers import (
    RegularizerConfig,
    describe,
    format_value,
    layer_regularization,
)

log = logging.getLogger(__name__)


def _warn_unused(model: ModelConfig, recipe: RegularizerConfig) -> None:
    """Say so when a recipe asks for something this architecture has no place for."""
    if model.conv_filters:
        return
    conv_only = {
        "dropout.conv_rate": recipe.dropout.conv_rate,
        "spatial_dropout.rate": recipe.spatial_dropout.rate,
        "group_lasso.conv": recipe.group_lasso.conv,
    }
    for key, value in conv_only.items():
        if value:
            log.warning("%s=%s has no effect: model %r has no conv layers", key, value, model.name)


def _check_fits(x: keras.KerasTensor, model: ModelConfig, window: int, layer_name: str) -> None:
    """A valid-padded window larger than the feature map is a config mistake; say which."""
    if model.padding == "same":
        return
    height, width = x.shape[1:3]
    if (height is not None and height < window) or (width is not None and width < window):
        raise ConfigError(
            f"model.conv_filters={model.conv_filters}: {layer_name} needs at least "
            f"{window}x{window} pixels but gets {height}x{width}; use fewer conv blocks "
            "or model.padding=same"
        )


def _seed_stream(seed: int, stream: int) -> Iterator[int]:
    """Independent seeds, one per draw: the index-th of stream ``stream`` under ``seed``."""
    for index in itertools.count():
        yield int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def _input_layers(
    inputs: keras.KerasTensor, recipe: RegularizerConfig, seeds: Iterator[int]
) -> keras.KerasTensor:
    """Augmentation then noise on the images; Keras makes both identities at inference."""
    augmentation = recipe.augmentation
    x = inputs
    # Fashion-MNIST items sit on a black background: fill the uncovered border with 0.
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    if augmentation.flip != "none":
        x = layers.RandomFlip(augmentation.flip, seed=next(seeds), name="augment_flip")(x)
    if augmentation.translation > 0:
        x = layers.RandomTranslation(
            augmentation.translation,
            augmentation.translation,
            seed=next(seeds),
            name="augment_translation",
            **fill,
        )(x)
    if augmentation.rotation > 0:
        x = layers.RandomRotation(
            augmentation.rotation, seed=next(seeds), name="augment_rotation", **fill
        )(x)
    if augmentation.zoom > 0:
        x = layers.RandomZoom(augmentation.zoom, seed=next(seeds), name="augment_zoom", **fill)(x)
    if recipe.gaussian_noise.stddev > 0:
        x = layers.GaussianNoise(
            recipe.gaussian_noise.stddev, seed=next(seeds), name="input_noise"
        )(x)
    return x


def build_model(
    model: ModelConfig,
    recipe: RegularizerConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
) -> keras.Model:
    """A fresh, uncompiled model returning logits.

    Every initializer and random layer draws its own seed from ``seed``, so the
    same seed gives the same initial weights and the same dropout masks, and no
    two layers share a random stream. Initializers and random layers (dropout,
    noise, augmentation) use separate streams: all variants of one model start
    from the same weights whatever layers their recipe adds, so a comparison
    between variants is not also a comparison between initializations.
    """
    model.validate()
    _warn_unused(model, recipe)
    weight_seeds = _seed_stream(seed, 0)
    seeds = _seed_stream(seed, 1)

    def initializers() -> dict[str, keras.initializers.Initializer]:
        return {
            "kernel_initializer": keras.initializers.GlorotUniform(seed=next(weight_seeds)),
            "bias_initializer": keras.initializers.Zeros(),
        }

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = _input_layers(inputs, recipe, seeds)

    conv_regularization = layer_regularization(recipe, "conv")
    for block, filters in enumerate(model.conv_filters, start=1):
        _check_fits(x, model, model.kernel_size, f"conv_{block}")
        x = layers.Conv2D(
            filters,
            model.kernel_size,
            activation=model.activation,
            padding=model.padding,
            name=f"conv_{block}",
            **initializers(),
            **conv_regularization,
        )(x)
        _check_fits(x, model, 2, f"pool_{block}")
        x = layers.MaxPooling2D(2, padding=model.padding, name=f"pool_{block}")(x)

        if recipe.spatial_dropout.rate > 0:
            x = layers.SpatialDropout2D(
                recipe.spatial_dropout.rate, seed=next(seeds), name=f"spatial_dropout_{block}"
            )(x)
        if recipe.dropout.conv_rate > 0:
            x = layers.Dropout(
                recipe.dropout.conv_rate, seed=next(seeds), name=f"dropout_conv_{block}"
            )(x)

    x = layers.Flatten(name="flatten")(x)
    dense_regularization = layer_regularization(recipe, "dense")
    dense_rate = recipe.dropout.dense_rate
    for index, units in enumerate(model.dense_units, start=1):
        x = layers.Dense(
            units,
            activation=model.activation,
            name=f"dense_{index}",
            **initializers(),
            **dense_regularization,
        )(x)
        if dense_rate > 0:
            x = layers.Dropout(dense_rate, seed=next(seeds), name=f"dropout_dense_{index}")(x)
    if not model.dense_units and dense_rate > 0:
        # No hidden Dense layer (tutorial_cnn): "before the classifier" is right after Flatten.
        x = layers.Dropout(dense_rate, seed=next(seeds), name="dropout_dense")(x)

    # float32 logits under a mixed-precision policy too: the softmax and the
    # cross-entropy need the range, as Keras's mixed-precision guide advises.
    logits = layers.Dense(
        num_classes, name="logits", dtype="float32", **initializers(), **dense_regularization
    )(x)
    return keras.Model(inputs, logits, name=model.name)


def _layer_settings(layer: keras.layers.Layer) -> str:
    """The hyperparameters of the regularization layers (rate, stddev, factors)."""
    config = layer.get_config()
    keys = ("rate", "stddev", "mode", "height_factor", "width_factor", "factor")
    shown = [f"{key}={format_value(config[key])}" for key in keys if key in config]
    return ", ".join(shown) or "-"


def describe_model(model: keras.Model) -> str:
    """A text table of every layer: output shape, parameters, regularizers, constraint.

    Logged as an MLflow artifact so a run shows exactly which penalty sat on
    which layer, not just the recipe that asked for it.
    """
    header = (
        "layer",
        "type",
        "output shape",
        "params",
        "kernel regularizer",
        "bias regularizer",
        "activity regularizer",
        "kernel constraint",
        "settings",
    )
    rows = [header]
    for layer in model.layers:
        output_shape = tuple(layer.output.shape)
        is_weighted = hasattr(layer, "kernel_regularizer")
        rows.append(
            (
                layer.name,
                type(layer).__name__,
                str(output_shape),
                f"{layer.count_params():,}",
                describe(getattr(layer, "kernel_regularizer", None)) if is_weighted else "-",
                describe(getattr(layer, "bias_regularizer", None)) if is_weighted else "-",
                describe(layer.activity_regularizer),
                describe(getattr(layer, "kernel_constraint", None)) if is_weighted else "-",
                "-" if is_weighted else _layer_settings(layer),
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    trainable = sum(int(keras.ops.size(weight)) for weight in model.trainable_weights)
    lines.append("")
    lines.append(
        f"model {model.name}: {model.count_params():,} parameters ({trainable:,} trainable)"
    )
    return "\n".join(lines) + "\n"


# The timestamp every entry of a saved model gets: the zip format's earliest.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_model(model: keras.Model, path: str | Path, shown_as: str | Path | None = None) -> None:
    """``model.save`` whose bytes depend on the model alone, written atomically.

    Keras writes the save time into ``metadata.json``, stamps the weights entry
    of the zip with it and numbers shared objects in ``config.json`` by their
    memory address, so two identical runs gave two files and DVC two hashes (no
    deduplication in its cache, run cache or remote). Here the date goes, every
    entry carries the same timestamp and shared objects are numbered 1, 2, ...
    in the order they appear; the rest is Keras's own.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        saved = Path(folder) / "model.keras"
        try:
            model.save(saved)
        except OSError as error:  # Keras's writers do not say which file
            raise WriteError.of(error, shown_as or path) from None
        buffer = io.BytesIO()
        with zipfile.ZipFile(saved) as source, zipfile.ZipFile(buffer, "w") as target:
            for entry in source.infolist():
                data = source.read(entry)
                if entry.filename == "metadata.json":
                    metadata = json.loads(data)
                    metadata.pop("date_saved", None)
                    data = json.dumps(metadata, sort_keys=True).encode()
                elif entry.filename == "config.json":
                    data = json.dumps(_renumber_shared(json.loads(data), {})).encode()
                fixed = zipfile.ZipInfo(entry.filename, date_time=_ZIP_EPOCH)
                fixed.compress_type = entry.compress_type
                fixed.external_attr = entry.external_attr
                target.writestr(fixed, data)
    write_atomic(path, buffer.getvalue())


def _renumber_shared(node: Any, numbers: dict[int, int]) -> Any:
    """``shared_object_id`` values (memory addresses) -> 1, 2, ... in order of appearance."""
    if isinstance(node, dict):
        return {
            key: numbers.setdefault(value, len(numbers) + 1)
            if key == "shared_object_id"
            else _renumber_shared(value, numbers)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_renumber_shared(item, numbers) for item in node]
    return node
