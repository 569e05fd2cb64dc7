"""Schema of a regularizer recipe and of the model: plain dataclasses, no Keras.

They live apart from the code that turns them into Keras objects
(:mod:`reglab.model.regularizers`, :mod:`reglab.model.build`) so that reading and checking
the config (every stage's first step, ``make params``) does not pay for
importing TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from reglab.config.checks import bounded

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


@dataclass
class RegularizerConfig:
    """One regularization recipe. Every technique defaults to off."""

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
        # Both would sit in the same place after each conv block; stacking them is
        # almost never meant, so ask the user to pick one.
        if self.dropout.conv_rate > 0 and self.spatial_dropout.rate > 0:
            raise ValueError(
                f"dropout.conv_rate={self.dropout.conv_rate} and "
                f"spatial_dropout.rate={self.spatial_dropout.rate} are both set; "
                "after a conv block use one of them and set the other to 0"
            )


# -------------------------------------------------------------------- model

MODEL_NAMES: tuple[str, ...] = ("cnn", "tutorial_cnn", "mlp")
ACTIVATIONS: tuple[str, ...] = ("relu", "elu", "gelu", "selu", "swish", "tanh")


@dataclass
class ModelConfig:
    name: str = bounded("cnn", choices=MODEL_NAMES)
    # One conv block per entry: Conv2D(filters) -> MaxPool(2). Empty for the MLP.
    conv_filters: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = bounded(3, ge=1)
    # "valid" as in the tutorials; "same" keeps small inputs (8x8 digits) from
    # shrinking to nothing before the second pooling.
    padding: str = bounded("valid", choices=["valid", "same"])
    # Hidden Dense layers between Flatten and the logits.
    dense_units: list[int] = field(default_factory=lambda: [128])
    activation: str = bounded("relu", choices=ACTIVATIONS)

    def validate(self) -> None:
        for key, sizes in (("conv_filters", self.conv_filters), ("dense_units", self.dense_units)):
            if any(size < 1 for size in sizes):
                raise ValueError(f"{key}={sizes}: every size must be >= 1")
        if self.name == "mlp" and self.conv_filters:
            raise ValueError(
                f"conv_filters={self.conv_filters}: the mlp has no conv layers; set it to []"
            )
        if self.name != "mlp" and not self.conv_filters:
            raise ValueError(f"conv_filters=[]: model {self.name!r} needs at least one conv block")
