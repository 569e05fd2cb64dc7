"""Apply a regularizer recipe to any Keras model with ``keras.models.clone_model``.

The model (built-in or the user's) comes plain and unregularized; the recipe
lands on it in one clone:

- ``clone_function`` sets the kernel (depthwise / pointwise), bias and activity
  regularizers and the kernel constraint of every selected layer
  (``regularizer.layers``: by type and name pattern; the output layer only when
  asked), and makes a softmax output return logits;
- ``call_function`` inserts the random layers: augmentation and noise on the
  input, Dropout / SpatialDropout after each selected conv layer (after its
  pooling layer when one follows it directly, as in Conv -> Pool -> Dropout),
  Dropout after each selected hidden Dense layer, or, when there is none,
  before the classifier.

The clone then takes the original's weights layer by layer, so its initial
weights are the builder's (or the saved file's). Each inserted random layer
draws its own seed, in graph order, from a stream of the run seed that the
initializers do not use: all variants of one model start from the same weights
whatever layers their recipe adds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
from keras import layers

from reglab.config.checks import ConfigError
from reglab.core.seeds import seed_stream
from reglab.model.imports import import_object
from reglab.model.regularizers import (
    RegularizerConfig,
    RegularizerSum,
    kernel_constraint,
    kernel_regularizer,
    l1_l2_penalty,
)
from reglab.model.weights import all_layers

# The stream of the run seed that inserted random layers draw from (the built-in
# builders' initializers use stream 0).
RANDOM_LAYER_STREAM = 1

DENSE_TYPES: tuple[type, ...] = (layers.Dense,)
CONV_TYPES: tuple[type, ...] = (
    layers.Conv1D,
    layers.Conv2D,
    layers.Conv3D,
    layers.SeparableConv1D,
    layers.SeparableConv2D,
    layers.DepthwiseConv1D,
    layers.DepthwiseConv2D,
)
POOLING_TYPES: tuple[type, ...] = (
    layers.MaxPooling1D,
    layers.MaxPooling2D,
    layers.MaxPooling3D,
    layers.AveragePooling1D,
    layers.AveragePooling2D,
    layers.AveragePooling3D,
)
SPATIAL_DROPOUT = {
    3: layers.SpatialDropout1D,
    4: layers.SpatialDropout2D,
    5: layers.SpatialDropout3D,
}


def layer_type(layer: keras.layers.Layer) -> str | None:
    """``"conv"``, ``"dense"`` or None: the recipe's name for a layer's kind."""
    if isinstance(layer, CONV_TYPES):
        return "conv"
    if isinstance(layer, DENSE_TYPES):
        return "dense"
    return None


def _kernel_keys(layer: keras.layers.Layer) -> tuple[tuple[str, str], ...]:
    """(regularizer, constraint) config keys of the layer's kernels."""
    if isinstance(layer, layers.SeparableConv1D | layers.SeparableConv2D):
        return (
            ("depthwise_regularizer", "depthwise_constraint"),
            ("pointwise_regularizer", "pointwise_constraint"),
        )
    if isinstance(layer, layers.DepthwiseConv1D | layers.DepthwiseConv2D):
        return (("depthwise_regularizer", "depthwise_constraint"),)
    return (("kernel_regularizer", "kernel_constraint"),)


def _kernel_rank(layer: keras.layers.Layer, regularizer_key: str) -> int:
    name = regularizer_key.replace("_regularizer", "_kernel")
    kernel = getattr(layer, name, None)
    if kernel is None:
        kernel = getattr(layer, "kernel", None)
    return len(kernel.shape) if kernel is not None else 2


def functional(model: keras.Model, input_shape: Sequence[int]) -> keras.Model:
    """A Sequential model as a functional one on the same layers (clone_model's
    ``call_function`` works on functional models only)."""
    if not isinstance(model, keras.Sequential):
        return model
    if not model.built:
        model.build((None, *input_shape))
    return keras.Model(model.inputs, model.outputs, name=model.name)


@dataclass
class Output:
    """The classifier layer and what makes it return logits."""

    classifier: keras.layers.Layer
    # A final Softmax / Activation("softmax") layer the clone leaves out.
    dropped: keras.layers.Layer | None = None
    linearize: bool = False


def find_output(model: keras.Model) -> Output:
    """The layer that computes the class scores, and how it ends.

    reglab trains on logits (the loss is computed ``from_logits`` and the data
    loss / calibration read logits): a softmax on the classifier, or a Softmax
    layer after it, is taken off in the clone; probabilities are
    ``softmax(logits)``. Any other final activation is refused.
    """
    if len(model.outputs) != 1:
        raise ConfigError(
            f"model {model.name!r} has {len(model.outputs)} outputs; reglab trains a "
            "classifier with one output of num_classes scores"
        )
    final = model.outputs[0]._keras_history.operation
    dropped = None
    if isinstance(final, layers.Softmax) or (
        isinstance(final, layers.Activation) and final.activation is keras.activations.softmax
    ):
        dropped = final
        final = final._inbound_nodes[0].input_tensors[0]._keras_history.operation
    activation = getattr(final, "activation", keras.activations.linear)
    if activation is keras.activations.softmax:
        return Output(final, dropped, linearize=dropped is None)
    if activation is not keras.activations.linear:
        raise ConfigError(
            f"model {model.name!r}: output layer {final.name!r} ends in "
            f"{getattr(activation, '__name__', activation)}; end with a linear or softmax "
            "Dense layer of num_classes units"
        )
    return Output(final, dropped)


# An inserted random layer, made when the clone reaches it, from the seed drawn then.
MakeLayer = Callable[[int], keras.layers.Layer]


@dataclass
class Placement:
    """Where the recipe lands: the selected layers and the inserted random layers."""

    targets: dict[int, keras.layers.Layer] = field(default_factory=dict)
    # id(original layer) -> [(name, make layer from a seed)] called on its output.
    after: dict[int, list[tuple[str, MakeLayer]]] = field(default_factory=dict)
    before_classifier: list[tuple[str, MakeLayer]] = field(default_factory=list)

    def dense_dropout_placed(self) -> bool:
        return bool(self.before_classifier) or any(
            name.startswith("dropout_") and layer_type(self.targets.get(key)) == "dense"
            for key, inserted in self.after.items()
            for name, _ in inserted
        )


def select_layers(
    model: keras.Model, recipe: RegularizerConfig, output: Output, regularize_output: bool
) -> list[keras.layers.Layer]:
    """The layers the recipe's penalties, constraints and dropout act on."""
    selection = recipe.layers
    with_output = regularize_output if selection.output is None else selection.output
    include = re.compile(selection.include)
    exclude = re.compile(selection.exclude) if selection.exclude else None
    chosen = []
    for layer in all_layers(model):
        kind = layer_type(layer)
        if kind is None or kind not in selection.types:
            continue
        if layer is output.classifier and not with_output:
            continue
        if not include.fullmatch(layer.name) or (exclude and exclude.fullmatch(layer.name)):
            continue
        chosen.append(layer)
    return chosen


def _technique_types(recipe: RegularizerConfig) -> dict[str, tuple[Any, set[str]]]:
    """Every setting the recipe turns on that attaches to layers -> (value, layer types)."""
    both = {"conv", "dense"}
    found: dict[str, tuple[Any, set[str]]] = {}
    for tensor in ("kernel", "bias", "activity"):
        penalty = getattr(recipe, tensor)
        for strength in ("l1", "l2"):
            if getattr(penalty, strength) > 0:
                found[f"{tensor}.{strength}"] = (getattr(penalty, strength), both)
            for kind in ("conv", "dense"):
                value = getattr(getattr(penalty, kind), strength)
                if value:
                    found[f"{tensor}.{kind}.{strength}"] = (value, {kind})
    if recipe.orthogonal.factor > 0:
        found["orthogonal.factor"] = (recipe.orthogonal.factor, {"dense"})
    for kind in ("conv", "dense"):
        if getattr(recipe.group_lasso, kind) > 0:
            found[f"group_lasso.{kind}"] = (getattr(recipe.group_lasso, kind), {kind})
    if recipe.max_norm.max_value is not None:
        found["max_norm.max_value"] = (recipe.max_norm.max_value, both)
    if recipe.custom.name is not None:
        found["custom.name"] = (recipe.custom.name, both)
    if recipe.dropout.conv_rate > 0:
        found["dropout.conv_rate"] = (recipe.dropout.conv_rate, {"conv"})
    if recipe.spatial_dropout.rate > 0:
        found["spatial_dropout.rate"] = (recipe.spatial_dropout.rate, {"conv"})
    return found


def check_placement(model: keras.Model, recipe: RegularizerConfig, placement: Placement) -> None:
    """A recipe that would act on no layer is a mistake, not a silent no-op."""
    kinds = {layer_type(layer) for layer in placement.targets.values()}
    techniques = _technique_types(recipe)
    if recipe.dropout.dense_rate > 0 and not placement.dense_dropout_placed():
        techniques["dropout.dense_rate"] = (recipe.dropout.dense_rate, {"dense"})
    for key, (value, wanted) in techniques.items():
        if key == "dropout.dense_rate" or not wanted & kinds:
            selection = recipe.layers
            raise ConfigError(
                f"{key}={value}: acts on {'/'.join(sorted(wanted))} layers, and "
                f"model {model.name!r} has none selected (regularizer.layers: types="
                f"{selection.types}, include={selection.include!r}, exclude="
                f"{selection.exclude!r}, output={selection.output}); change the recipe "
                "or the selection"
            )


def custom_regularizer(recipe: RegularizerConfig) -> keras.regularizers.Regularizer | None:
    """The user's regularizer the recipe names (``module.ClassName``), built with its
    arguments. It must be registered with Keras, or the saved model would not load."""
    custom = recipe.custom
    if custom.name is None:
        return None
    found = import_object(custom.name, "custom.name")
    if not (isinstance(found, type) and issubclass(found, keras.regularizers.Regularizer)):
        raise ConfigError(
            f"custom.name={custom.name!r}: {found!r} is not a keras.regularizers.Regularizer "
            "subclass"
        )
    if keras.saving.get_registered_object(keras.saving.get_registered_name(found)) is not found:
        raise ConfigError(
            f"custom.name={custom.name!r}: {found.__name__} is not registered; decorate it "
            "with @keras.saving.register_keras_serializable(package=...) so that the saved "
            "model loads"
        )
    try:
        return found(**custom.arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"custom.arguments={custom.arguments}: {error}") from None


def _with_custom(
    regularizer: keras.regularizers.Regularizer | None, extra: keras.regularizers.Regularizer | None
) -> keras.regularizers.Regularizer | None:
    if extra is None:
        return regularizer
    copy = extra.__class__.from_config(extra.get_config())
    return copy if regularizer is None else RegularizerSum([regularizer, copy])


def regularized_config(
    layer: keras.layers.Layer, recipe: RegularizerConfig, kind: str
) -> dict[str, Any]:
    """The layer's config with the recipe's regularizers and constraints set."""
    config = layer.get_config()
    custom = custom_regularizer(recipe)
    on = recipe.custom.on
    for regularizer_key, constraint_key in _kernel_keys(layer):
        rank = _kernel_rank(layer, regularizer_key)
        regularizer = kernel_regularizer(recipe, kind)
        config[regularizer_key] = _with_custom(regularizer, custom if on == "kernel" else None)
        config[constraint_key] = kernel_constraint(recipe, kind, rank)
    if config.get("use_bias", True):
        bias = l1_l2_penalty(*recipe.bias.strengths(kind))
        config["bias_regularizer"] = _with_custom(bias, custom if on == "bias" else None)
    activity = l1_l2_penalty(*recipe.activity.strengths(kind))
    config["activity_regularizer"] = _with_custom(activity, custom if on == "activity" else None)
    return config


def _unique(name: str, taken: set[str]) -> str:
    candidate, index = name, 1
    while candidate in taken:
        index += 1
        candidate = f"{name}_{index}"
    taken.add(candidate)
    return candidate


def _consumer(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The one layer that reads ``layer``'s output, if exactly one does (Keras keeps
    a layer's outbound nodes; there is no public accessor)."""
    nodes = layer._outbound_nodes
    return nodes[0].operation if len(nodes) == 1 else None


def place_random_layers(
    targets: Sequence[keras.layers.Layer],
    output: Output,
    recipe: RegularizerConfig,
    taken: set[str],
) -> Placement:
    """Dropout after the selected layers (see the module docstring); seeds are drawn later,
    in graph order, when the clone calls them."""
    placement = Placement(targets={id(layer): layer for layer in targets})
    conv_rate, spatial_rate = recipe.dropout.conv_rate, recipe.spatial_dropout.rate
    dense_rate = recipe.dropout.dense_rate
    hidden_dense = False
    for layer in targets:
        kind = layer_type(layer)
        if kind == "conv" and (conv_rate > 0 or spatial_rate > 0):
            consumer = _consumer(layer)
            anchor = consumer if isinstance(consumer, POOLING_TYPES) else layer
            inserted = placement.after.setdefault(id(anchor), [])
            rank = len(layer.output.shape)
            if spatial_rate > 0:
                spatial = SPATIAL_DROPOUT.get(rank)
                if spatial is None:
                    raise ConfigError(
                        f"spatial_dropout.rate={spatial_rate}: layer {layer.name!r} has "
                        f"rank-{rank} outputs; SpatialDropout needs 1D, 2D or 3D feature maps"
                    )
                name = _unique(f"spatial_dropout_{layer.name}", taken)
                inserted.append((name, _random_layer(spatial, spatial_rate, name)))
            if conv_rate > 0:
                name = _unique(f"dropout_{layer.name}", taken)
                inserted.append((name, _random_layer(layers.Dropout, conv_rate, name)))
        elif kind == "dense" and layer is not output.classifier and dense_rate > 0:
            hidden_dense = True
            name = _unique(f"dropout_{layer.name}", taken)
            placement.after.setdefault(id(layer), []).append(
                (name, _random_layer(layers.Dropout, dense_rate, name))
            )
    if dense_rate > 0 and not hidden_dense and "dense" in recipe.layers.types:
        # No hidden Dense layer (the tutorial CNN): "before the classifier".
        name = _unique(f"dropout_before_{output.classifier.name}", taken)
        placement.before_classifier.append((name, _random_layer(layers.Dropout, dense_rate, name)))
    return placement


def _random_layer(kind: type, rate: float, name: str) -> MakeLayer:
    return lambda seed: kind(rate, seed=seed, name=name)


def input_layers(recipe: RegularizerConfig, rank: int) -> list[MakeLayer]:
    """Augmentation, then noise, on the inputs; Keras makes both identities at inference."""
    augmentation = recipe.augmentation
    made: list[MakeLayer] = []
    if augmentation.enabled and rank != 4:
        raise ConfigError(
            "augmentation: the random flips, shifts, rotations and zooms need image "
            f"inputs (height, width, channels), and this model's inputs have rank {rank - 1}; "
            "turn augmentation off for this data"
        )
    # Fashion-MNIST items sit on a black background: fill the uncovered border with 0.
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    if augmentation.flip != "none":
        made.append(lambda s: layers.RandomFlip(augmentation.flip, seed=s, name="augment_flip"))
    if augmentation.translation > 0:
        factor = augmentation.translation
        made.append(
            lambda s: layers.RandomTranslation(
                factor, factor, seed=s, name="augment_translation", **fill
            )
        )
    if augmentation.rotation > 0:
        made.append(
            lambda s: layers.RandomRotation(
                augmentation.rotation, seed=s, name="augment_rotation", **fill
            )
        )
    if augmentation.zoom > 0:
        made.append(
            lambda s: layers.RandomZoom(augmentation.zoom, seed=s, name="augment_zoom", **fill)
        )
    if recipe.gaussian_noise.stddev > 0:
        made.append(
            lambda s: layers.GaussianNoise(recipe.gaussian_noise.stddev, seed=s, name="input_noise")
        )
    return made


def apply_recipe(
    model: keras.Model,
    recipe: RegularizerConfig,
    seed: int,
    *,
    regularize_output: bool = False,
) -> keras.Model:
    """A clone of ``model`` with ``recipe`` in place and ``model``'s weights; returns logits."""
    recipe.validate()
    if len(model.inputs) != 1:
        raise ConfigError(f"model {model.name!r} has {len(model.inputs)} inputs; give it one")
    output = find_output(model)
    targets = select_layers(model, recipe, output, regularize_output)
    taken = {layer.name for layer in all_layers(model)}
    placement = place_random_layers(targets, output, recipe, taken)
    check_placement(model, recipe, placement)
    seeds = seed_stream(seed, RANDOM_LAYER_STREAM)
    mixed = keras.mixed_precision.global_policy().name != "float32"
    originals: dict[int, keras.layers.Layer] = {}

    def clone_function(layer: keras.layers.Layer) -> keras.layers.Layer:
        kind = layer_type(layer)
        config = (
            regularized_config(layer, recipe, kind)
            if id(layer) in placement.targets and kind is not None
            else layer.get_config()
        )
        if layer is output.classifier:
            if output.linearize:
                config["activation"] = "linear"
            if mixed:
                # float32 logits under a mixed-precision policy: the softmax and the
                # cross-entropy need the range, as Keras's mixed-precision guide advises.
                config["dtype"] = "float32"
        clone = layer.__class__.from_config(config)
        originals[id(clone)] = layer
        return clone

    source = model.inputs[0]
    # The input layer's name, not the tensor's: a Sequential model's input tensor is
    # numbered per process (keras_tensor_37), which would make saved files differ.
    inputs = keras.Input(
        batch_shape=source.shape, dtype=source.dtype, name=source._keras_history.operation.name
    )
    noisy: list[Any] = []

    def model_input() -> Any:
        if not noisy:
            x = inputs
            for make in input_layers(recipe, len(inputs.shape)):
                x = make(next(seeds))(x)
            noisy.append(x)
        return noisy[0]

    def call_function(layer: keras.layers.Layer, *args: Any, **kwargs: Any) -> Any:
        args = tuple(model_input() if arg is inputs else arg for arg in args)
        original = originals.get(id(layer), layer)
        if original is output.dropped:
            return args[0]
        if original is output.classifier:
            x = args[0]
            for _, make in placement.before_classifier:
                x = make(next(seeds))(x)
            args = (x, *args[1:])
        out = layer(*args, **kwargs)
        for _, make in placement.after.get(id(original), []):
            out = make(next(seeds))(out)
        return out

    clone = keras.models.clone_model(
        model,
        input_tensors=[inputs] if isinstance(model.input, list | tuple) else inputs,
        clone_function=clone_function,
        call_function=call_function,
        recursive=True,
    )
    for layer in model.layers:
        if layer.weights and layer is not output.dropped:
            clone.get_layer(layer.name).set_weights(layer.get_weights())
    return clone
