"""Regularizer recipes: schema, Keras factory and custom regularizers."""

from __future__ import annotations

from dataclasses import dataclass, field

from reglab.schema import bounded


@dataclass
class PenaltyConfig:
    l1: float = bounded(0.0, ge=0)
    l2: float = bounded(0.0, ge=0)


@dataclass
class DropoutConfig:
    conv_rate: float = bounded(0.0, ge=0, lt=1)
    dense_rate: float = bounded(0.0, ge=0, lt=1)


@dataclass
class RegularizerConfig:
    kernel: PenaltyConfig = field(default_factory=PenaltyConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
