"""The built-in architectures: builders of the same kind as a user's own.

Each is called as ``builder(input_shape, num_classes, seed=..., **arguments)`` and
returns a plain, unregularized ``keras.Model`` returning logits; the recipe is
applied afterwards by :func:`reglab.model.recipe.apply_recipe`, as for any model.

- ``cnn`` (default): Conv2D(32) -> MaxPool -> Conv2D(64) -> MaxPool -> Flatten
  -> Dense(128) -> Dense(classes).
- ``tutorial_cnn``: the small two-conv network of the Keras / TensorFlow
  tutorials: the same conv blocks, no hidden Dense layer.
- ``mlp``: Flatten -> Dense(512) -> Dense(512) -> Dense(classes), the dense
  networks of the overfitting and dropout examples.

Layer names are stable (``conv_1``, ``dense_1``, ``logits``, ...) and every
kernel initializer draws its own seed from ``seed``, so the same seed gives the
same initial weights and no two same-shaped kernels start equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
from keras import layers

from reglab.config.checks import ConfigError
from reglab.core.seeds import seed_stream

# The stream of ``seed`` the initializers draw from; inserted random layers
# (dropout, noise, augmentation) draw from their own (reglab.model.recipe).
WEIGHT_STREAM = 0


def _check_fits(x: keras.KerasTensor, padding: str, window: int, layer_name: str) -> None:
    """A valid-padded window larger than the feature map is a config mistake; say which."""
    if padding == "same":
        return
    height, width = x.shape[1:3]
    if (height is not None and height < window) or (width is not None and width < window):
        raise ConfigError(
            f"model.padding={padding}: {layer_name} needs at least {window}x{window} "
            f"pixels but gets {height}x{width}; use fewer conv blocks or model.padding=same"
        )


def _stack(
    input_shape: Sequence[int],
    num_classes: int,
    seed: int,
    name: str,
    conv_filters: Sequence[int],
    kernel_size: int,
    padding: str,
    dense_units: Sequence[int],
    activation: str,
) -> keras.Model:
    weight_seeds = seed_stream(seed, WEIGHT_STREAM)

    def initializers() -> dict[str, keras.initializers.Initializer]:
        return {
            "kernel_initializer": keras.initializers.GlorotUniform(seed=next(weight_seeds)),
            "bias_initializer": keras.initializers.Zeros(),
        }

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = inputs
    for block, filters in enumerate(conv_filters, start=1):
        _check_fits(x, padding, kernel_size, f"conv_{block}")
        x = layers.Conv2D(
            filters,
            kernel_size,
            activation=activation,
            padding=padding,
            name=f"conv_{block}",
            **initializers(),
        )(x)
        _check_fits(x, padding, 2, f"pool_{block}")
        x = layers.MaxPooling2D(2, padding=padding, name=f"pool_{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    for index, units in enumerate(dense_units, start=1):
        x = layers.Dense(units, activation=activation, name=f"dense_{index}", **initializers())(x)
    logits = layers.Dense(num_classes, name="logits", **initializers())(x)
    return keras.Model(inputs, logits, name=name)


def _architecture(
    name: str, conv_filters: Sequence[int], dense_units: Sequence[int], doc: str
) -> Callable[..., keras.Model]:
    """A builder of the stack with its own default blocks (the config's typed keys
    override them)."""

    def build(
        input_shape: Sequence[int],
        num_classes: int,
        *,
        seed: int,
        conv_filters: Sequence[int] = tuple(conv_filters),
        kernel_size: int = 3,
        padding: str = "valid",
        dense_units: Sequence[int] = tuple(dense_units),
        activation: str = "relu",
    ) -> keras.Model:
        return _stack(
            input_shape, num_classes, seed, name,
            conv_filters, kernel_size, padding, dense_units, activation,
        )  # fmt: skip

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    return build


cnn = _architecture("cnn", (32, 64), (128,), "Conv(32) -> Pool -> Conv(64) -> Pool -> Dense(128)")
tutorial_cnn = _architecture(
    "tutorial_cnn", (32, 64), (), "The tutorials' two conv blocks, no hidden Dense layer"
)
mlp = _architecture("mlp", (), (512, 512), "Flatten -> Dense(512) -> Dense(512)")
