"""Weight statistics and histograms: what a regularizer does to the weights."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def all_layers(model: Any) -> Iterator[Any]:
    """Every layer, inside nested models too, in the model's order."""
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from all_layers(layer)


# The attributes that hold each kind of weight: separable and depthwise convolutions
# keep their kernels under their own names.
_ATTRIBUTES = {"kernel": ("kernel", "depthwise_kernel", "pointwise_kernel"), "bias": ("bias",)}


def weight_arrays(model: Any, kinds: tuple[str, ...] = ("kernel", "bias")) -> dict[str, np.ndarray]:
    """Trainable kernels and biases by '<layer>/<attribute>' (e.g. 'conv_1/kernel'), in
    layer order, inside nested models too, whatever the layers are named."""
    arrays: dict[str, np.ndarray] = {}
    for layer in all_layers(model):
        for kind in kinds:
            for attribute in _ATTRIBUTES.get(kind, (kind,)):
                variable = getattr(layer, attribute, None)
                if variable is not None and hasattr(variable, "numpy"):
                    arrays[f"{layer.name}/{attribute}"] = np.asarray(variable.numpy())
    return arrays


def first_layer_kernel(model: Any) -> tuple[str, np.ndarray]:
    """The first layer's kernel, where a weight penalty's effect is easiest to see."""
    for name, values in weight_arrays(model, ("kernel",)).items():
        return name, values
    raise ValueError("the model has no layer with a kernel")


def largest_dense_kernel(model: Any) -> tuple[str, np.ndarray]:
    """The Dense kernel with the most weights (2-D kernels are Dense; conv kernels are
    4-D): the layer that holds most of the model, where L1's zeros show."""
    dense = {name: v for name, v in weight_arrays(model, ("kernel",)).items() if v.ndim == 2}
    if not dense:
        raise ValueError("the model has no Dense layer")
    name = max(dense, key=lambda key: dense[key].size)  # the first of equals, in layer order
    return name, dense[name]


# Fixed bins for the largest Dense kernel, the same for every variant and run, so the
# compare stage overlays counts without the weights: an odd number of bins puts one
# bin, 0.005 wide, around zero (where L1's spike is). Trained kernels of the default
# models stay well inside +-0.5; whatever falls outside is counted as below or above.
DENSE_HISTOGRAM_RANGE = (-0.5, 0.5)
DENSE_HISTOGRAM_BINS = 201


def dense_histogram_record(name: str, values: np.ndarray) -> dict[str, Any]:
    """A kernel as counts on the fixed bins (JSON-ready): ``layer``, ``shape``, ``edges``,
    ``counts``, ``zeros`` (weights exactly 0.0), ``below`` and ``above`` the range."""
    shape = list(np.shape(values))
    values = np.asarray(values, dtype=np.float32).ravel()
    edges = np.linspace(*DENSE_HISTOGRAM_RANGE, DENSE_HISTOGRAM_BINS + 1)
    counts, _ = np.histogram(values, bins=edges)
    low, high = DENSE_HISTOGRAM_RANGE
    return {
        "layer": name,
        "shape": shape,
        "edges": edges.tolist(),
        "counts": counts.astype(int).tolist(),
        "zeros": int(np.count_nonzero(values == 0)),
        "below": int(np.count_nonzero(values < low)),
        "above": int(np.count_nonzero(values > high)),
    }


def kernel_record(name: str, values: np.ndarray) -> dict[str, Any]:
    """A kernel as JSON-ready plain values: ``layer``, ``shape`` and ``values`` (flattened in
    row-major order; float32 values written as the float64 numbers they equal, so reading
    them back as float32 gives the same bits)."""
    values = np.asarray(values, dtype=np.float32)
    return {"layer": name, "shape": list(values.shape), "values": values.ravel().tolist()}


def statistics(values: np.ndarray, sparsity_threshold: float) -> dict[str, float]:
    """L1 norm, L2 norm, max |w| and the share of |w| below the threshold."""
    magnitudes = np.abs(values.astype(np.float64, copy=False)).ravel()
    return {
        "l1": float(magnitudes.sum()),
        "l2": float(np.sqrt(np.square(magnitudes).sum())),
        "max_abs": float(magnitudes.max(initial=0.0)),
        "sparsity": float(np.mean(magnitudes < sparsity_threshold)) if magnitudes.size else 0.0,
    }


def weight_statistics(model: Any, sparsity_threshold: float) -> dict[str, float]:
    """Metrics 'weights/<layer>/<kind>/<stat>' for every kernel and bias."""
    metrics: dict[str, float] = {}
    for name, values in weight_arrays(model).items():
        for stat, value in statistics(values, sparsity_threshold).items():
            metrics[f"weights/{name}/{stat}"] = value
    return metrics


def overall_sparsity(model: Any, sparsity_threshold: float) -> float:
    """Share of all kernel weights with |w| below the threshold."""
    kernels = [values.ravel() for values in weight_arrays(model, ("kernel",)).values()]
    if not kernels:
        return 0.0
    return float(np.mean(np.abs(np.concatenate(kernels)) < sparsity_threshold))


def histograms(model: Any, bins: int = 50) -> dict[str, dict[str, list[float]]]:
    """Per kernel: bin edges and counts, as plain lists (JSON-ready)."""
    result: dict[str, dict[str, list[float]]] = {}
    for name, values in weight_arrays(model, ("kernel",)).items():
        counts, edges = np.histogram(values.ravel(), bins=bins)
        result[name] = {"edges": edges.tolist(), "counts": counts.astype(int).tolist()}
    return result
