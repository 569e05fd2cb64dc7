"""Two models of the kind a user brings: plain, unregularized Keras, nothing of reglab's.

reglab calls a builder as ``builder(input_shape, num_classes, **model.kwargs)`` and
applies the recipe to what it returns (penalties on the selected layers, dropout
after them), so none of that is written here::

    dvc exp run -S model=keras -S model.builder=examples.models.resnet \
        -S model.source=examples
    reglab train model=keras model.builder=examples.models.dense +model.kwargs.width=64

A regularizer of your own is registered with Keras and named in a recipe
(``variants.l2.custom.name=examples.models.CenteredL2``).
"""

from __future__ import annotations

import keras
from keras import layers


def _residual_block(x, filters: int, name: str):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, name=f"{name}_project")(x)
    y = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv_a")(x)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv_b")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def resnet(input_shape, num_classes: int, filters: int = 16, blocks: int = 2) -> keras.Model:
    """A small residual CNN in the functional API, ending in softmax (reglab takes
    the softmax off and trains on the logits)."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Conv2D(filters, 3, padding="same", activation="relu", name="stem")(inputs)
    for index in range(blocks):
        x = _residual_block(x, filters * 2**index, f"block{index + 1}")
        x = layers.MaxPooling2D(2, padding="same", name=f"block{index + 1}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(32, activation="relu", name="head")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="resnet")


def dense(input_shape, num_classes: int, width: int = 128, depth: int = 2) -> keras.Model:
    """A Sequential MLP, for images (flattened) or a table's feature vectors."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Flatten(),
            *[layers.Dense(width, activation="relu") for _ in range(depth)],
            layers.Dense(num_classes),
        ],
        name="dense",
    )


@keras.saving.register_keras_serializable(package="examples")
class CenteredL2(keras.regularizers.Regularizer):
    """``strength * sum((w - mean(w))**2)``: shrinks weights towards their mean, not 0."""

    def __init__(self, strength: float = 1e-3):
        if not isinstance(strength, int | float) or strength < 0:
            raise ValueError(f"`strength` must be a number >= 0; received strength={strength!r}")
        self.strength = float(strength)

    def __call__(self, weights):
        centered = weights - keras.ops.mean(weights)
        return self.strength * keras.ops.sum(keras.ops.square(centered))

    def get_config(self) -> dict:
        return {"strength": self.strength}
