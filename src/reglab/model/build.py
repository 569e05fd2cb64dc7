"""Build the model a run trains: its plain form, then the recipe applied to it.

:func:`build_model` is the one path for every model: the built-in builders
(:mod:`reglab.model.builders`), a user's builder and a saved ``.keras`` file all
give a plain ``keras.Model`` (:mod:`reglab.model.source`), and
:func:`reglab.model.recipe.apply_recipe` puts the recipe on it with
``keras.models.clone_model``. Every model returns logits (no softmax): the loss is
computed ``from_logits``. Metrics and histograms are logged per layer name,
whatever the names are.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras

from reglab.config.recipes import ACTIVATIONS, MODEL_NAMES, ModelConfig  # noqa: F401
from reglab.core.io import WriteError, write_atomic
from reglab.model.recipe import apply_recipe
from reglab.model.regularizers import RegularizerConfig, describe, format_value
from reglab.model.source import base_model

log = logging.getLogger(__name__)


def build_model(
    model: ModelConfig,
    recipe: RegularizerConfig,
    input_shape: Sequence[int],
    num_classes: int,
    seed: int,
) -> keras.Model:
    """A fresh, uncompiled model returning logits, the recipe in place.

    The same seed gives the same initial weights and the same dropout masks: the
    builder's initializers and the inserted random layers draw from separate
    streams of ``seed``, so all variants of one model start from the same
    weights whatever layers their recipe adds.
    """
    model.validate()
    plain = base_model(model, input_shape, num_classes, seed)
    return apply_recipe(plain, recipe, seed, regularize_output=model.regularize_output)


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
