"""Build a keras.Model from the model config and a regularizer recipe."""

from __future__ import annotations

from dataclasses import dataclass, field

from reglab.schema import bounded


@dataclass
class ModelConfig:
    name: str = bounded("cnn", choices=["cnn"])
    conv_filters: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = bounded(3, ge=1)
    dense_units: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
