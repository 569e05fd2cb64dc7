"""Floating-point work of a Keras model, counted from its layer shapes.

Only convolutions and dense layers are counted: they hold nearly all the
arithmetic of the project's models (biases, activations and pooling add well
under 1 % for the default CNN). One multiply-add is two FLOPs. A training step
costs about three forward passes: the forward pass itself, then the gradients
with respect to the activations and with respect to the weights, each about
as expensive as the forward pass.
"""

from __future__ import annotations

import math
from typing import Any

# Forward + backward (input gradients) + backward (weight gradients).
TRAINING_TO_FORWARD = 3


def _shape(tensor_or_shape: Any) -> tuple[int, ...]:
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(int(size) for size in shape[1:])


def layer_forward_flops(layer: Any) -> int:
    """FLOPs of one sample through ``layer`` (0 for layers that are not conv or dense)."""
    import keras

    if isinstance(layer, keras.layers.Conv2D) and not isinstance(
        layer, keras.layers.Conv2DTranspose
    ):
        output_height, output_width, filters = _shape(layer.output)
        kernel_height, kernel_width, inputs_per_group, kernel_filters = layer.kernel.shape
        multiply_adds = (
            output_height * output_width * kernel_height * kernel_width * inputs_per_group * filters
        )
        if int(kernel_filters) != filters:
            raise ValueError(f"{layer.name}: kernel has {kernel_filters} filters, output {filters}")
        return 2 * int(multiply_adds)
    if isinstance(layer, keras.layers.Dense):
        inputs, units = (int(size) for size in layer.kernel.shape)
        # A Dense layer on a rank > 2 input applies its kernel at every leading position.
        positions = math.prod(_shape(layer.input)[:-1])
        return 2 * inputs * units * positions
    return 0


def forward_flops_per_sample(model: Any) -> int:
    """Forward-pass FLOPs of one sample through every conv and dense layer of ``model``."""
    return sum(layer_forward_flops(layer) for layer in model.layers)


def training_flops_per_sample(model: Any) -> int:
    """FLOPs of one sample through one training step (forward + backward)."""
    return TRAINING_TO_FORWARD * forward_flops_per_sample(model)
