"""Kernel-histogram figures of a run: per-epoch images and the start/end overlay."""

from __future__ import annotations

from typing import Any

import numpy as np


def agg_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib figure on the Agg canvas, outside pyplot's registry of figures.

    Nothing to close: the figure is not kept by pyplot.
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
    """A run's kernel-histogram images, one per recorded epoch, drawn when the run ends.

    ``histograms`` is the training state's record of the counts, keyed by epoch
    (a resumed run's earlier epochs included); the last image's title says "after
    training". The panels are laid out once and redrawn for each epoch.
    """

    def __init__(self, label: str, histograms: dict[str, dict[str, dict[str, list[float]]]]):
        self.label = label
        self.histograms = histograms

    def recorded(self) -> list[int]:
        """The epochs with histograms, in order."""
        return sorted(int(epoch) for epoch in list(self.histograms))

    def finish(self) -> tuple[dict[int, np.ndarray], Any]:
        """Every image by epoch, and the overlay of the first and last histograms of the
        first layer and the last hidden one (where the tutorials look)."""
        recorded = self.recorded()
        first, last = recorded[0], recorded[-1]
        names = list(self.histograms[str(first)])
        panels = HistogramPanels(names)
        images = {}
        for epoch in recorded:
            title = f"{self.label}: kernel weights, epoch {epoch}"
            title += " (after training)" if epoch == last else ""
            images[epoch] = panels.image(self.histograms[str(epoch)], title)
        layers = [names[0], names[-2]] if len(names) > 2 else names
        overlay = plot_start_end_overlay(
            self.histograms[str(first)],
            self.histograms[str(last)],
            layers,
            f"{self.label}: kernel weights at epoch {first} and {last}",
        )
        return images, overlay


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
