"""Schema of a regularizer recipe and of the model: plain dataclasses, no Keras.

They live apart from the code that turns them into Keras objects
(:mod:`reglab.model.regularizers`, :mod:`reglab.model.build`) so that reading and checking
the config (every stage's first step, ``make params``) does not pay for
importing TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reglab.config.checks import ConfigError, bounded

LayerType = Literal["conv", "dense"]
LAYER_TYPES: tuple[str, ...] = ("conv", "dense")

# Columns of the training history (reglab.train.fit) that early stopping may watch:
# the data loss is the cross-entropy alone, the total loss adds the penalties.
EARLY_STOPPING_MONITORS: tuple[str, ...] = ("val_data_loss", "val_total_loss", "val_accuracy")
FLIP_MODES: tuple[str, ...] = ("none", "horizontal", "vertical", "horizontal_and_vertical")


# --------------------------------------------------------------------------- schema


@dataclass
class LayerPenaltyConfig:
    """Strengths for one layer type; ``null`` means "use the shared value above"."""

    l1: float | None = bounded(None, ge=0)
    l2: float | None = bounded(None, ge=0)


@dataclass
class PenaltyConfig:
    """L1/L2 strengths on one kind of tensor (kernel, bias or activity).

    ``l1`` and ``l2`` apply to every Conv2D and Dense layer; ``conv`` and ``dense``
    override them for one layer type (for example an L2 penalty on Dense layers
    only: ``l2: 1e-3`` and ``conv: {l2: 0.0}``).
    """

    l1: float = bounded(0.0, ge=0)
    l2: float = bounded(0.0, ge=0)
    conv: LayerPenaltyConfig = field(default_factory=LayerPenaltyConfig)
    dense: LayerPenaltyConfig = field(default_factory=LayerPenaltyConfig)

    def strengths(self, layer_type: LayerType) -> tuple[float, float]:
        """The (l1, l2) strengths that apply to ``layer_type``."""
        override: LayerPenaltyConfig = getattr(self, layer_type)
        l1 = self.l1 if override.l1 is None else override.l1
        l2 = self.l2 if override.l2 is None else override.l2
        return l1, l2


@dataclass
class OrthogonalConfig:
    """Keras's OrthogonalRegularizer on every Dense kernel (it accepts rank-2 kernels only).

    ``columns`` pushes the weight vectors of different output units apart, which
    is what "decorrelated features" usually means for a Dense kernel.
    """

    factor: float = bounded(0.0, ge=0)
    mode: str = bounded("columns", choices=["rows", "columns"])


@dataclass
class GroupLassoConfig:
    """:class:`GroupLasso` strength per layer type: groups are conv filters / dense units."""

    conv: float = bounded(0.0, ge=0)
    dense: float = bounded(0.0, ge=0)


@dataclass
class DropoutConfig:
    """Dropout rate per position: after each conv block, and before the classifier."""

    conv_rate: float = bounded(0.0, ge=0, lt=1)
    dense_rate: float = bounded(0.0, ge=0, lt=1)


@dataclass
class SpatialDropoutConfig:
    """SpatialDropout2D after each conv block: drops whole feature maps, not pixels."""

    rate: float = bounded(0.0, ge=0, lt=1)


@dataclass
class GaussianNoiseConfig:
    """Additive zero-mean Gaussian noise on the input images (training only)."""

    stddev: float = bounded(0.0, ge=0)


@dataclass
class MaxNormConfig:
    """MaxNorm constraint on every kernel: each unit's / filter's incoming weight vector
    is rescaled to norm <= max_value after every update. ``null`` turns it off."""

    max_value: float | None = bounded(None, gt=0)


@dataclass
class AugmentationConfig:
    """Random image transformations, active only in training.

    ``translation``, ``rotation`` and ``zoom`` are the Keras layers' factors:
    a fraction of the image size (translation, zoom) or of a full turn (rotation).
    """

    flip: str = bounded("none", choices=FLIP_MODES)
    translation: float = bounded(0.0, ge=0, lt=1)
    rotation: float = bounded(0.0, ge=0, lt=1)
    zoom: float = bounded(0.0, ge=0, lt=1)

    @property
    def enabled(self) -> bool:
        return self.flip != "none" or any((self.translation, self.rotation, self.zoom))


@dataclass
class EarlyStoppingConfig:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    enabled: bool = False
    monitor: str = bounded("val_data_loss", choices=EARLY_STOPPING_MONITORS)
    patience: int = bounded(3, ge=1)
    min_delta: float = bounded(0.0, ge=0)
    restore_best_weights: bool = True

    def kept_index(self, history: list[Mapping[str, Any]]) -> int:
        """The index in ``history`` of the epoch whose weights a model trained under this
        rule holds after those epochs: the best epoch by ``monitor`` where the rule is on
        and restores its best weights, else the last.

        Keras's ``EarlyStopping`` rule (an improvement beats the best by more than
        ``min_delta``; the first epoch is the first best), worked out from the history
        rows: a search replays a resumed trial's stored epochs, where no callback ran,
        and must score them as the final model keeps them. tests/test_training.py checks
        it against the callback's own ``best_epoch``.
        """
        if not (self.enabled and self.restore_best_weights):
            return len(history) - 1
        sign = -1.0 if "accuracy" in self.monitor else 1.0  # min: lower is better
        best_index, best = 0, None
        for index, row in enumerate(history):
            value = sign * float(row[self.monitor])
            if best is None or value + self.min_delta < best:
                best_index, best = index, value
        return best_index


@dataclass
class LayerSelection:
    """Which layers of the model a recipe's penalties, constraints and dropout act on.

    ``types``: ``dense`` (Dense) and ``conv`` (Conv1D/2D/3D, SeparableConv1D/2D,
    DepthwiseConv1D/2D); ``include`` / ``exclude``: regular expressions matched
    against the whole layer name. The output layer takes part only with
    ``output: true``; ``null`` leaves it to the model (``model.regularize_output``).
    """

    types: list[str] = field(default_factory=lambda: list(LAYER_TYPES))
    include: str = ".*"
    exclude: str | None = None
    output: bool | None = None

    def validate(self) -> None:
        unknown = [kind for kind in self.types if kind not in LAYER_TYPES]
        if unknown or not self.types:
            raise ValueError(f"layers.types={self.types}: give one or more of {list(LAYER_TYPES)}")
        for key in ("include", "exclude"):
            pattern = getattr(self, key)
            if pattern is None:
                continue
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(
                    f"layers.{key}={pattern!r}: not a regular expression ({error})"
                ) from None


@dataclass
class CustomRegularizerConfig:
    """A regularizer of the user's own: ``name`` is its import path
    (``package.module.ClassName``, registered with
    ``keras.saving.register_keras_serializable`` so the saved model loads), built
    with ``arguments`` and added to the kernels (or biases, or activities) of the
    selected layers."""

    name: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    on: str = bounded("kernel", choices=["kernel", "bias", "activity"])


@dataclass
class RegularizerConfig:
    """One regularization recipe. Every technique defaults to off."""

    layers: LayerSelection = field(default_factory=LayerSelection)
    custom: CustomRegularizerConfig = field(default_factory=CustomRegularizerConfig)

    kernel: PenaltyConfig = field(default_factory=PenaltyConfig)
    bias: PenaltyConfig = field(default_factory=PenaltyConfig)
    activity: PenaltyConfig = field(default_factory=PenaltyConfig)
    orthogonal: OrthogonalConfig = field(default_factory=OrthogonalConfig)
    group_lasso: GroupLassoConfig = field(default_factory=GroupLassoConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    spatial_dropout: SpatialDropoutConfig = field(default_factory=SpatialDropoutConfig)
    gaussian_noise: GaussianNoiseConfig = field(default_factory=GaussianNoiseConfig)
    max_norm: MaxNormConfig = field(default_factory=MaxNormConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Decoupled weight decay (AdamW): weights shrink by learning_rate * weight_decay
    # per step, independently of Adam's gradient scaling, unlike an L2 penalty.
    weight_decay: float = bounded(0.0, ge=0)
    label_smoothing: float = bounded(0.0, ge=0, lt=1)

    def validate(self) -> None:
        if self.custom.name is None and self.custom.arguments:
            raise ValueError(
                f"custom.arguments={self.custom.arguments}: name the regularizer (custom.name)"
            )
        # Both would sit in the same place after each conv block; stacking them is
        # almost never meant, so ask the user to pick one.
        if self.dropout.conv_rate > 0 and self.spatial_dropout.rate > 0:
            raise ValueError(
                f"dropout.conv_rate={self.dropout.conv_rate} and "
                f"spatial_dropout.rate={self.spatial_dropout.rate} are both set; "
                "after a conv block use one of them and set the other to 0"
            )


# -------------------------------------------------------------------- model


def split_import_path(path: str) -> tuple[str, str]:
    """``package.module.name`` or ``package.module:name`` -> (module, name)."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    return module, name


# The architectures reglab ships, as builders of the same kind as a user's own.
BUILTIN_BUILDERS: dict[str, str] = {
    name: f"reglab.model.builders.{name}" for name in ("cnn", "tutorial_cnn", "mlp")
}
MODEL_NAMES: tuple[str, ...] = tuple(BUILTIN_BUILDERS)
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "gelu", "selu", "swish", "tanh")


@dataclass
class ModelConfig:
    """The model: a builder function (built-in or the user's) or a saved ``.keras`` file.

    ``builder`` is ``package.module.function`` (or ``package.module:function``),
    called as ``builder(input_shape, num_classes, **kwargs)`` (plus ``seed=`` if it
    takes one) and returning a plain, unregularized ``keras.Model``. Naming it
    runs that code, like an import. The built-in builders take the typed keys below
    (``conv_filters`` ... ``activation``); a user's builder takes ``kwargs``.
    ``file``: a saved model instead, re-initialized from the seed unless
    ``keep_weights``. ``source``: the file or folder of the model's code (or the
    ``.keras`` file) that DVC tracks, so editing it re-runs the train stages.
    """

    name: str = "cnn"
    # null: the built-in builder of that name (cnn, tutorial_cnn, mlp).
    builder: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    keep_weights: bool = False
    source: str = "src/reglab/model/builders.py"
    # Whether the recipes' penalties act on the output layer too when the recipe
    # does not say (regularizer.layers.output: null). The built-ins penalize their
    # classifier, as the Keras tutorials they follow do; model=keras does not.
    regularize_output: bool = True
    # One conv block per entry: Conv2D(filters) -> MaxPool(2). Empty for the MLP.
    conv_filters: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = bounded(3, ge=1)
    # "valid" as in the tutorials; "same" keeps small inputs (8x8 digits) from
    # shrinking to nothing before the second pooling.
    padding: str = bounded("valid", choices=["valid", "same"])
    # Hidden Dense layers between Flatten and the logits.
    dense_units: list[int] = field(default_factory=lambda: [128])
    activation: str = bounded("relu", choices=ACTIVATIONS)

    @property
    def builder_path(self) -> str | None:
        """The builder to call: ``builder``, or the built-in named ``name``."""
        if self.file is not None:
            return None
        return self.builder or BUILTIN_BUILDERS.get(self.name)

    @property
    def builtin(self) -> str | None:
        """The built-in architecture this config builds, or None for the user's own."""
        for name, path in BUILTIN_BUILDERS.items():
            if self.builder_path == path:
                return name
        return None

    def builder_arguments(self) -> dict[str, Any]:
        """The keyword arguments the builder is called with."""
        if self.builtin is None:
            return dict(self.kwargs)
        return {
            "conv_filters": list(self.conv_filters),
            "kernel_size": self.kernel_size,
            "padding": self.padding,
            "dense_units": list(self.dense_units),
            "activation": self.activation,
        }

    def module_name(self) -> str | None:
        """The module of the builder (None for a saved file)."""
        path = self.builder_path
        return None if path is None else split_import_path(path)[0]

    def check_source(self, root: Path) -> None:
        """``source`` exists and holds the model's code (the builder's module, when it
        lies in the project folder ``root``, or the saved file), so that DVC tracks
        what the train stages run. The built-ins' code is the package's own."""
        if self.builtin is not None:
            return
        source = (root / self.source).resolve()
        if not source.exists():
            raise ConfigError(
                f"model.source={self.source}: no such file or folder; name the file or "
                "folder of your model's code, which DVC tracks"
            )
        if self.file is not None:
            code = (root / self.file).resolve()
            key = f"model.file={self.file}"
        else:
            name = str(self.module_name())
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError) as error:
                spec, problem = None, str(error)
            else:
                problem = "no such module"
            if spec is None:
                raise ConfigError(
                    f"model.builder={self.builder_path}: module {name!r} is not found "
                    f"({problem}); put it in the project folder (run from there) or "
                    "install its package"
                )
            if spec.origin is None or not Path(spec.origin).exists():
                return
            code = Path(spec.origin).resolve()
            key = f"model.builder={self.builder_path}"
            if not code.is_relative_to(root.resolve()):
                return  # an installed package: its version is in the run's environment
        if code != source and not code.is_relative_to(source):
            raise ConfigError(
                f"model.source={self.source}: does not hold {os.path.relpath(code, root)}"
                f", the code of {key}; set model.source to it (or its folder) so that "
                "editing it re-runs the train stages"
            )

    def validate(self) -> None:
        if self.builder is not None and self.file is not None:
            raise ValueError(f"builder={self.builder!r}, file={self.file!r}: give one of them")
        if self.builder_path is None and self.file is None:
            raise ValueError(
                f"builder=null: model {self.name!r} is not a built-in ({', '.join(MODEL_NAMES)}); "
                "name your builder (-S model.builder=examples.models.resnet) or a saved "
                "model (-S model.file=path/to/model.keras)"
            )
        if self.keep_weights and self.file is None:
            raise ValueError("keep_weights=true: only a saved model (model.file) has weights")
        builtin = self.builtin
        if builtin is None:
            return
        if self.kwargs:
            raise ValueError(
                f"kwargs={self.kwargs}: the built-in {builtin!r} takes the typed keys "
                "(conv_filters, kernel_size, padding, dense_units, activation)"
            )
        for key, sizes in (("conv_filters", self.conv_filters), ("dense_units", self.dense_units)):
            if any(size < 1 for size in sizes):
                raise ValueError(f"{key}={sizes}: every size must be >= 1")
        if builtin == "mlp" and self.conv_filters:
            raise ValueError(
                f"conv_filters={self.conv_filters}: the mlp has no conv layers; set it to []"
            )
        if builtin != "mlp" and not self.conv_filters:
            raise ValueError(f"conv_filters=[]: model {builtin!r} needs at least one conv block")
