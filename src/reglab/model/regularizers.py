"""Regularizer recipes made into Keras objects: the recipe -> Keras factory, custom regularizers.

A recipe (one ``variants.<name>`` entry of the composed config; its schema,
:class:`~reglab.config.recipes.RegularizerConfig`, lives in :mod:`reglab.config.recipes`) says
how strongly each technique acts. Everything is off by default, so
``RegularizerConfig()`` is the unregularized baseline and each file in
``conf/regularizer/`` states only what it turns on.

Weight penalties, the orthogonality and group-lasso penalties and the max-norm
constraint attach to Conv2D and Dense layers through :func:`layer_regularization`;
dropout, noise and augmentation are layers that :mod:`reglab.model.build` inserts;
early stopping, weight decay and label smoothing change the training procedure
and are read by :mod:`reglab.train.fit`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from reglab.config.recipes import (  # noqa: F401 - the schema, re-exported here
    EARLY_STOPPING_MONITORS,
    FLIP_MODES,
    LAYER_TYPES,
    AugmentationConfig,
    DropoutConfig,
    EarlyStoppingConfig,
    GaussianNoiseConfig,
    GroupLassoConfig,
    LayerPenaltyConfig,
    LayerType,
    MaxNormConfig,
    OrthogonalConfig,
    PenaltyConfig,
    RegularizerConfig,
    SpatialDropoutConfig,
)

# ------------------------------------------------------------- custom regularizers


def _check_strength(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"`{name}` must be a number; received {name}={value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0; received {name}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="reglab")
class GroupLasso(keras.regularizers.Regularizer):
    """Group lasso over output units: ``strength * sum_g sqrt(|g|) * ||w_g||_2``.

    A group is everything that feeds one output unit: one filter of a Conv2D
    kernel ``(h, w, in, out)`` or one column of a Dense kernel ``(in, out)``. The
    L2 norm inside the sum is not squared, so, like L1 on single weights, it
    drives whole groups to zero and prunes filters / units rather than shrinking
    every weight a little. ``sqrt(|g|)`` (Yuan & Lin, 2006) keeps the strength
    comparable between layers whose filters have different sizes.
    """

    # Keeps the gradient of the norm finite when a group reaches exactly zero.
    epsilon = 1e-12

    def __init__(self, strength: float = 1e-4) -> None:
        self.strength = _check_strength("strength", strength)

    def __call__(self, weights: Any) -> Any:
        if len(weights.shape) < 2:
            raise ValueError(
                "GroupLasso needs a kernel with an output axis last (rank >= 2); "
                f"received shape={tuple(weights.shape)}"
            )
        group_axes = tuple(range(len(weights.shape) - 1))
        group_size = math.prod(weights.shape[:-1])
        norms = ops.sqrt(ops.sum(ops.square(weights), axis=group_axes) + self.epsilon)
        return self.strength * math.sqrt(group_size) * ops.sum(norms)

    def get_config(self) -> dict[str, Any]:
        return {"strength": self.strength}


@keras.saving.register_keras_serializable(package="reglab")
class RegularizerSum(keras.regularizers.Regularizer):
    """The sum of several regularizers, for a kernel that more than one technique targets.

    A Keras layer takes one ``kernel_regularizer``; this lets an L2 penalty and,
    say, the orthogonality penalty act on the same kernel. ``regularizers`` may
    hold regularizer objects or their serialized dicts (what ``get_config``
    returns), so the class needs no ``from_config`` of its own.
    """

    def __init__(self, regularizers: list[Any]) -> None:
        if not isinstance(regularizers, list | tuple) or not regularizers:
            raise ValueError(
                "`regularizers` must be a non-empty list of regularizers; "
                f"received regularizers={regularizers!r}"
            )
        built = [
            keras.regularizers.deserialize(item) if isinstance(item, dict) else item
            for item in regularizers
        ]
        for item in built:
            if not isinstance(item, keras.regularizers.Regularizer):
                raise ValueError(
                    "`regularizers` must hold keras.regularizers.Regularizer objects; "
                    f"received an item {item!r}"
                )
        self.regularizers = built

    def __call__(self, weights: Any) -> Any:
        total = self.regularizers[0](weights)
        for regularizer in self.regularizers[1:]:
            total = total + regularizer(weights)
        return total

    def get_config(self) -> dict[str, Any]:
        return {"regularizers": [keras.regularizers.serialize(r) for r in self.regularizers]}


# ------------------------------------------------------------------------ factory


def l1_l2_penalty(l1: float, l2: float) -> keras.regularizers.Regularizer | None:
    """The plainest Keras regularizer for the strengths: L1, L2, L1L2 or none.

    Using L1 or L2 rather than L1L2(l1, 0) keeps the model summary readable.
    """
    if l1 > 0 and l2 > 0:
        return keras.regularizers.L1L2(l1=l1, l2=l2)
    if l1 > 0:
        return keras.regularizers.L1(l1)
    if l2 > 0:
        return keras.regularizers.L2(l2)
    return None


def _combine(
    regularizers: list[keras.regularizers.Regularizer | None],
) -> keras.regularizers.Regularizer | None:
    active = [r for r in regularizers if r is not None]
    if not active:
        return None
    return active[0] if len(active) == 1 else RegularizerSum(active)


def kernel_regularizer(
    recipe: RegularizerConfig, layer_type: LayerType
) -> keras.regularizers.Regularizer | None:
    """Every penalty the recipe puts on a kernel of ``layer_type``, combined into one."""
    parts = [l1_l2_penalty(*recipe.kernel.strengths(layer_type))]
    if layer_type == "dense" and recipe.orthogonal.factor > 0:
        parts.append(
            keras.regularizers.OrthogonalRegularizer(
                factor=recipe.orthogonal.factor, mode=recipe.orthogonal.mode
            )
        )
    group_strength = getattr(recipe.group_lasso, layer_type)
    if group_strength > 0:
        parts.append(GroupLasso(group_strength))
    return _combine(parts)


def kernel_constraint(
    recipe: RegularizerConfig, layer_type: LayerType, rank: int | None = None
) -> keras.constraints.Constraint | None:
    """MaxNorm over each output unit's incoming weights (all axes but the last of a
    kernel of ``rank``; a Conv2D kernel's by default for ``"conv"``)."""
    if recipe.max_norm.max_value is None:
        return None
    rank = rank or (4 if layer_type == "conv" else 2)
    axis: int | list[int] = 0 if rank == 2 else list(range(rank - 1))
    return keras.constraints.MaxNorm(max_value=recipe.max_norm.max_value, axis=axis)


def layer_regularization(recipe: RegularizerConfig, layer_type: LayerType) -> dict[str, Any]:
    """Keyword arguments for a Conv2D (``"conv"``) or Dense (``"dense"``) layer."""
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"layer_type must be one of {LAYER_TYPES}; received {layer_type!r}")
    return {
        "kernel_regularizer": kernel_regularizer(recipe, layer_type),
        "bias_regularizer": l1_l2_penalty(*recipe.bias.strengths(layer_type)),
        "activity_regularizer": l1_l2_penalty(*recipe.activity.strengths(layer_type)),
        "kernel_constraint": kernel_constraint(recipe, layer_type),
    }


def describe(obj: Any) -> str:
    """A short text for a regularizer or constraint, e.g. ``L2(l2=0.001)``; ``-`` for none."""
    if obj is None:
        return "-"
    if isinstance(obj, RegularizerSum):
        return " + ".join(describe(part) for part in obj.regularizers)
    arguments = ", ".join(f"{key}={format_value(value)}" for key, value in obj.get_config().items())
    return f"{type(obj).__name__}({arguments})"


def format_value(value: Any) -> str:
    """A config value as text, floats to six significant digits."""
    # Keras stores some factors as float32, whose repr (0.10000000149011612) hides the
    # value the user typed; six significant digits show it back.
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    return repr(value)
