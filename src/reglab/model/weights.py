"""Weight statistics and histograms: what a regularizer does to the weights."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def weight_arrays(model: Any, kinds: tuple[str, ...] = ("kernel", "bias")) -> dict[str, np.ndarray]:
    """Trainable kernels and biases by '<layer>/<kind>' (e.g. 'conv_1/kernel'), in layer order."""
    arrays: dict[str, np.ndarray] = {}
    for layer in model.layers:
        for kind in kinds:
            variable = getattr(layer, kind, None)
            if variable is not None and hasattr(variable, "numpy"):
                arrays[f"{layer.name}/{kind}"] = np.asarray(variable.numpy())
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


def agg_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib figure on the Agg canvas, outside pyplot's registry of figures.

    Nothing to close, and safe to draw in another thread (pyplot's global state
    is not thread-safe; a lone figure with its own canvas is).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


class HistogramPanels:
    """One panel per kernel, laid out once and redrawn for each set of counts.

    Making and laying out a figure (subplots, tight_layout) costs as much as drawing
    it; a run's kernels are the same at every epoch, so the panels are laid out
    once and only the bars, the axis limits and the title change between images.
    """

    def __init__(self, names: list[str]) -> None:
        self.names = list(names)
        columns = min(3, max(1, len(self.names)))
        rows = max(1, -(-len(self.names) // columns))
        self.figure = agg_figure(figsize=(4 * columns, 3 * rows))
        axes = self.figure.subplots(rows, columns, squeeze=False)
        self.axes = list(axes.ravel())
        self.bars = {}
        for axis, name in zip(self.axes, self.names, strict=False):
            self.bars[name] = axis.stairs([0.0], [0.0, 1.0], fill=True, alpha=0.7)
            axis.set_title(name, fontsize=9)
            axis.set_xlabel("weight")
            axis.set_ylabel("count")
        for axis in self.axes[len(self.names) :]:
            axis.set_visible(False)
        self.title = self.figure.suptitle("")
        self.digits = 0  # of the largest count when the panels were last laid out

    def draw(self, hists: dict[str, dict[str, list[float]]], title: str) -> Any:
        """The figure with ``hists`` (the same kernels as at construction) and ``title``."""
        for axis, name in zip(self.axes, self.names, strict=False):
            self.bars[name].set_data(hists[name]["counts"], hists[name]["edges"])
            axis.relim()
            axis.autoscale_view()
        self.title.set_text(title)
        # Laid out again only when the counts get more digits (wider tick labels).
        digits = max(len(str(int(max(hists[name]["counts"], default=0)))) for name in self.names)
        if digits > self.digits:
            self.figure.tight_layout()
            self.digits = digits
        return self.figure

    def image(self, hists: dict[str, dict[str, list[float]]], title: str) -> np.ndarray:
        """:meth:`draw` as an RGB array (for mlflow.log_image with a step)."""
        self.draw(hists, title).canvas.draw()
        return np.asarray(self.figure.canvas.buffer_rgba())[..., :3].copy()


class HistogramImages:
    """A run's kernel-histogram images, drawn in a background thread while it trains.

    An epoch hook: after each epoch, the histograms recorded so far in
    ``histograms`` (the training state's, keyed by epoch) are drawn on a worker
    thread while the next epochs train, all but the newest: the last image's
    title says "after training", and only the end of training tells which one is
    last. :meth:`finish` draws the rest and returns every image by epoch, with the
    start/end overlay; the end of the ``with`` block stops the thread. Drawing is
    matplotlib's Agg and training TensorFlow's kernels, both mostly outside the
    GIL, so on the cores TensorFlow leaves idle the images cost little wall time,
    instead of about half a second each after training. ``histograms`` may
    already hold a resumed run's earlier epochs.
    """

    def __init__(self, label: str, histograms: dict[str, dict[str, dict[str, list[float]]]]):
        from concurrent.futures import ThreadPoolExecutor

        self.label = label
        self.histograms = histograms
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="reglab-histograms")
        self.drawn: dict[int, Any] = {}  # epoch -> Future of its image
        self.panels: HistogramPanels | None = None

    def __enter__(self) -> HistogramImages:
        return self

    def __exit__(self, *exc: object) -> None:
        """The drawing thread ends with the run, also when training raised."""
        self.executor.shutdown(cancel_futures=True)

    def _recorded(self) -> list[int]:
        return sorted(int(epoch) for epoch in list(self.histograms))

    def _draw(self, epoch: int, last: bool) -> np.ndarray:
        hists = self.histograms[str(epoch)]
        if self.panels is None:
            self.panels = HistogramPanels(list(hists))
        title = f"{self.label}: kernel weights, epoch {epoch}"
        return self.panels.image(hists, title + (" (after training)" if last else ""))

    def _submit(self, epochs: list[int], last: int | None = None) -> None:
        for epoch in epochs:
            if epoch not in self.drawn:
                self.drawn[epoch] = self.executor.submit(self._draw, epoch, epoch == last)

    def __call__(self, epoch: int, row: Any = None) -> None:
        self._submit(self._recorded()[:-1])

    def finish(self) -> tuple[dict[int, np.ndarray], Any]:
        """Every image by epoch, and the overlay of the first and last histograms of the
        first layer and the last hidden one (where the tutorials look)."""
        recorded = self._recorded()
        first, last = recorded[0], recorded[-1]
        self._submit(recorded, last=last)
        names = list(self.histograms[str(first)])
        layers = [names[0], names[-2]] if len(names) > 2 else names
        overlay = self.executor.submit(
            plot_start_end_overlay,
            self.histograms[str(first)],
            self.histograms[str(last)],
            layers,
            f"{self.label}: kernel weights at epoch {first} and {last}",
        )
        images = {epoch: future.result() for epoch, future in sorted(self.drawn.items())}
        return images, overlay.result()


def plot_start_end_overlay(
    start: dict[str, dict[str, list[float]]],
    end: dict[str, dict[str, list[float]]],
    layers: list[str],
    title: str,
) -> Any:
    """For each named kernel: its histogram before training and after, on one axis."""
    figure = agg_figure(figsize=(5 * len(layers), 3.5))
    axes = figure.subplots(1, len(layers), squeeze=False)
    for axis, name in zip(axes.ravel(), layers, strict=True):
        for label, hists, alpha in (("start", start, 0.45), ("end", end, 0.6)):
            edges = np.asarray(hists[name]["edges"])
            counts = np.asarray(hists[name]["counts"])
            # Densities, so histograms with different bin widths compare fairly.
            density = counts / max(counts.sum(), 1) / np.diff(edges)
            axis.stairs(density, edges, fill=True, alpha=alpha, label=label)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel("weight")
        axis.set_ylabel("density")
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return figure
