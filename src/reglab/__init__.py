"""reglab: a reproducible laboratory for neural-network regularization."""

__version__ = "0.1.0"
