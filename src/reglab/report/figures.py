"""The comparison's figures. Each writes a PNG and returns the series it drew,
so tests (and the summary) can check the data, not the pixels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reglab.core.io import atomic_path
from reglab.report.load import ReportError
from reglab.report.stats import BASELINE, CONFIDENCE, Sweep, VariantSummary, mean_curve
from reglab.report.weight_figures import agg_figure

BASELINE_COLOUR = "0.3"  # dark grey: the reference every figure compares against


def variant_colours(variants: Sequence[str], baseline: str = BASELINE) -> dict[str, str]:
    """One colour per variant, the same in every figure: the baseline dark grey, the
    others Matplotlib's colour cycle in name order (not in each figure's own order,
    which is the leaderboard's rank in one and the names in another)."""
    others = sorted({name for name in variants if name != baseline})
    colours = {name: f"C{index % 10}" for index, name in enumerate(others)}
    if baseline in variants:
        colours[baseline] = BASELINE_COLOUR
    return colours


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    """Save through a temporary name so a killed stage leaves no half-written PNG."""
    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        _pyplot().close(figure)


def validation_loss_figure(
    histories: Mapping[str, Sequence[Mapping[str, Sequence[float]]]], path: Path
) -> dict[str, dict[str, list[Any]]]:
    """Validation data loss per epoch, every variant on one plot (mean over seeds).

    As in the TensorFlow "overfit and underfit" tutorial, the training data loss of
    each variant is drawn dashed in the same colour, so the widening gap of an
    overfitting model is visible next to the regularized ones.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    series: dict[str, dict[str, list[Any]]] = {}
    colours = variant_colours(list(histories))
    for variant, runs in sorted(histories.items()):
        color = colours[variant]
        val_mean, val_std = mean_curve([run["val_data_loss"] for run in runs])
        epochs = max((run["epoch"] for run in runs), key=len)[: len(val_mean)]
        entry: dict[str, list[Any]] = {
            "epoch": [int(e) for e in epochs],
            "val_data_loss": val_mean,
            "val_data_loss_std": val_std,
        }
        axis.plot(epochs, val_mean, color=color, label=f"{variant} (validation)")
        if any(s is not None for s in val_std):
            low = [m - (s or 0.0) for m, s in zip(val_mean, val_std, strict=True)]
            high = [m + (s or 0.0) for m, s in zip(val_mean, val_std, strict=True)]
            axis.fill_between(epochs, low, high, color=color, alpha=0.15)
        if all("train_data_loss" in run for run in runs):
            train_mean, _ = mean_curve([run["train_data_loss"] for run in runs])
            entry["train_data_loss"] = train_mean
            axis.plot(epochs, train_mean, color=color, linestyle="--", alpha=0.7)
        series[variant] = entry
    axis.set_xlabel("epoch")
    axis.set_ylabel("data loss (cross-entropy, no penalty)")
    axis.set_title("Validation data loss per epoch (dashed: training data loss)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    _save(figure, path)
    return series


def accuracy_loss_figure(
    summaries: Sequence[VariantSummary], path: Path, baseline: str = BASELINE
) -> dict[str, Any]:
    """Each variant's difference from the baseline in test accuracy and test data loss.

    A point at the mean paired difference over the seeds with its 95 % confidence
    interval (Student's t, :func:`reglab.report.stats.compare_to_baseline`) as the bar,
    against the baseline's zero line; a filled point is significant (Holm-adjusted
    p < 0.05), a hollow one is not. One seed: the difference alone, no bar. Without a
    baseline among the variants: each variant's mean, no bar.

    Points rather than bars: the differences are small, so the axis cannot start at zero.
    """
    plt = _pyplot()
    by_name = {row.variant: row for row in summaries}
    against = baseline in by_name
    rows = [row for row in summaries if row.variant != baseline] if against else list(summaries)
    names = [row.variant for row in rows]
    series: dict[str, Any] = {"variant": names, "baseline": baseline if against else None}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    positions = np.arange(len(names))
    colours = variant_colours(list(by_name), baseline)
    metrics = (
        ("test_accuracy", "accuracy_vs_baseline"),
        ("test_data_loss", "data_loss_vs_baseline"),
    )
    for axis, (key, attribute) in zip(axes, metrics, strict=True):
        title = key.replace("_", " ")
        if not against:
            series[key] = [getattr(row, key).mean for row in rows]
            for index, value in enumerate(series[key]):
                axis.plot(positions[index], value, "o", color=colours[names[index]])
            axis.set_title(f"{title} (mean over seeds)")
        else:
            deltas = [getattr(row, attribute) for row in rows]
            series[f"{key}_difference"] = [delta.difference for delta in deltas]
            series[f"{key}_ci"] = [
                None if delta.ci_low is None else [delta.ci_low, delta.ci_high] for delta in deltas
            ]
            series[f"{key}_significant"] = [delta.significant for delta in deltas]
            for index, delta in enumerate(deltas):
                colour = colours[names[index]]
                bar = None
                if delta.ci_low is not None:
                    bar = [[delta.difference - delta.ci_low], [delta.ci_high - delta.difference]]
                axis.errorbar(
                    positions[index],
                    delta.difference,
                    yerr=bar,
                    fmt="o",
                    capsize=5 if bar else 0,
                    color=colour,
                    markerfacecolor=colour if delta.significant else "white",
                )
            axis.axhline(0.0, color=BASELINE_COLOUR, linestyle="--", linewidth=1)
            judged = any(delta.ci_low is not None for delta in deltas)
            suffix = f", {CONFIDENCE * 100:.0f} % CI over seeds" if judged else ""
            axis.set_title(f"{title} − {baseline}{suffix}", fontsize=10)
        axis.set_xticks(positions, names, rotation=30)
        axis.set_xlim(-0.5, len(names) - 0.5)
        axis.grid(axis="y", alpha=0.3)
    if against:
        figure.suptitle(
            "Difference from the baseline (filled: significant, Holm-adjusted p < 0.05)",
            fontsize=10,
        )
    figure.tight_layout()
    _save(figure, path)
    return series


def weight_histogram_figure(
    kernels: Mapping[str, np.ndarray], path: Path, baseline: str = BASELINE, bins: int | None = None
) -> dict[str, Any]:
    """First-layer kernel histograms: the baseline overlaid on each regularized variant.

    All panels share one set of bin edges so the counts are comparable between
    variants (the first layer has the same shape in all of them). By default about
    two bins per square root of the weight count: enough to show the shape of a few
    hundred weights without turning it into noise.
    """
    if baseline not in kernels:
        raise ReportError(f"no first-layer kernel for {baseline!r}: cannot overlay the baseline")
    others = [name for name in kernels if name != baseline]
    values = {name: np.asarray(array, dtype=np.float64).ravel() for name, array in kernels.items()}
    if bins is None:
        bins = int(np.clip(2 * np.sqrt(len(values[baseline])), 10, 80))
    low = min(float(v.min()) for v in values.values())
    high = max(float(v.max()) for v in values.values())
    edges = (
        np.linspace(low, high, bins + 1) if high > low else np.linspace(low - 1, high + 1, bins + 1)
    )
    counts = {
        name: np.histogram(v, bins=edges)[0].astype(int).tolist() for name, v in values.items()
    }

    plt = _pyplot()
    colours = variant_colours(list(kernels), baseline)
    columns = min(3, max(1, len(others)))
    rows = max(1, -(-len(others) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.5 * columns, 3.3 * rows), squeeze=False, sharex=True
    )
    for axis, name in zip(axes.ravel(), others, strict=False):
        axis.stairs(
            counts[baseline], edges, fill=True, alpha=0.35, color=colours[baseline], label=baseline
        )
        axis.stairs(counts[name], edges, color=colours[name], linewidth=1.8, label=name)
        axis.set_title(f"{name} vs {baseline}", fontsize=9)
        axis.set_xlabel("weight")
        axis.tick_params(labelbottom=True)  # shared x: a panel above an empty slot keeps its ticks
        axis.set_ylabel("count")
        axis.legend(fontsize=7)
    for axis in axes.ravel()[len(others) :]:
        axis.set_visible(False)
    figure.suptitle("First-layer kernel weights")
    figure.tight_layout()
    _save(figure, path)
    return {"bin_edges": edges.tolist(), "counts": counts, "baseline": baseline}


def dense_histogram_figure(
    histograms: Mapping[str, Mapping[str, Any]],
    path: Path,
    baseline: str = BASELINE,
    variants: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The largest Dense kernel: the baseline overlaid on each regularized variant, a log
    count axis.

    Most of the model's weights are in this layer. On a log axis the bin around zero,
    where L1 piles weights up and L2 only narrows the bell, stands out against the
    baseline instead of hiding the tails. ``histograms`` are counts on the same fixed
    bins (:func:`reglab.model.weights.dense_histogram_record`); ``variants`` (default: the
    histograms' own) decides the colours, as in every other figure.
    """
    if baseline not in histograms:
        raise ReportError(f"no largest Dense kernel histogram for {baseline!r}")
    edges = np.asarray(histograms[baseline]["edges"], dtype=np.float64)
    for name, record in histograms.items():
        if not np.array_equal(np.asarray(record["edges"], dtype=np.float64), edges):
            raise ReportError(
                f"{name}: its largest Dense kernel histogram has other bins than "
                f"{baseline}'s; re-run both evaluate stages"
            )
    others = [name for name in histograms if name != baseline]
    counts = {
        name: np.asarray(record["counts"], dtype=np.int64) for name, record in histograms.items()
    }
    zero_bin = int(np.searchsorted(edges, 0.0, side="right") - 1)
    # Only the occupied range, with a bin of margin on each side.
    occupied = np.flatnonzero(np.sum(list(counts.values()), axis=0))
    first = max(int(occupied[0]) - 1, 0) if occupied.size else 0
    last = min(int(occupied[-1]) + 2, len(edges) - 1) if occupied.size else len(edges) - 1

    plt = _pyplot()
    colours = variant_colours(list(variants or histograms), baseline)
    columns = min(3, max(1, len(others)))
    rows = max(1, -(-len(others) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.5 * columns, 3.3 * rows), squeeze=False, sharex=True
    )

    def label(name: str) -> str:
        return f"{name} ({histograms[name]['zeros']:,} exactly 0)"

    scales = set()
    for axis, name in zip(axes.ravel(), others, strict=False):
        axis.stairs(
            counts[baseline],
            edges,
            fill=True,
            alpha=0.35,
            baseline=0.5,  # below one count: an empty bin has no height on the log axis
            color=colours[baseline],
            label=label(baseline),
        )
        axis.stairs(
            counts[name],
            edges,
            baseline=None,
            color=colours[name],
            linewidth=1.4,
            label=label(name),
        )
        axis.set_yscale("log")
        axis.set_ylim(bottom=0.5)
        axis.set_xlim(edges[first], edges[last])
        axis.set_title(f"{name} vs {baseline}", fontsize=9)
        axis.set_xlabel("weight")
        axis.tick_params(labelbottom=True)  # shared x: a panel above an empty slot keeps its ticks
        axis.set_ylabel("count (log)")
        axis.legend(fontsize=7)
        scales.add(axis.get_yscale())
    for axis in axes.ravel()[len(others) :]:
        axis.set_visible(False)
    record = histograms[baseline]
    weights_count = int(np.prod(record["shape"]))
    figure.suptitle(
        f"Largest Dense kernel ({record['layer']}, {weights_count:,} weights), "
        f"bin around 0: [{edges[zero_bin]:.4f}, {edges[zero_bin + 1]:.4f})"
    )
    figure.tight_layout()
    _save(figure, path)
    return {
        "layer": record["layer"],
        "bin_edges": edges.tolist(),
        "counts": {name: values.tolist() for name, values in counts.items()},
        "zero_bin": zero_bin,
        "zero_bin_counts": {name: int(values[zero_bin]) for name, values in counts.items()},
        "exact_zeros": {name: int(record["zeros"]) for name, record in histograms.items()},
        "y_scales": sorted(scales),
        "colours": {name: colours[name] for name in histograms},
        "baseline": baseline,
    }


def strength_sweep_figure(
    sweeps: Sequence[Sweep],
    summaries: Sequence[VariantSummary],
    path: Path,
    baseline: str = BASELINE,
) -> dict[str, dict[str, Any]]:
    """Test accuracy and sparsity against strength (log axis), one row per sweep."""
    by_name = {row.variant: row for row in summaries}
    base = by_name.get(baseline)
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    figure, axes = plt.subplots(len(sweeps), 2, figsize=(10, 3.6 * len(sweeps)), squeeze=False)
    series: dict[str, dict[str, Any]] = {}
    for (acc_axis, sparse_axis), sweep in zip(axes, sweeps, strict=True):
        rows = [by_name[name] for name in sweep.variants]
        entry = {
            "parameters": list(sweep.parameters),
            "variants": list(sweep.variants),
            "strength": list(sweep.strengths),
            "test_accuracy": [row.test_accuracy.mean for row in rows],
            "test_accuracy_std": [row.test_accuracy.std for row in rows],
            "sparsity": [row.sparsity.mean if row.sparsity else None for row in rows],
            "baseline_test_accuracy": base.test_accuracy.mean if base else None,
            "baseline_sparsity": base.sparsity.mean if base and base.sparsity else None,
        }
        series[sweep.label] = entry
        acc_axis.errorbar(
            entry["strength"],
            entry["test_accuracy"],
            yerr=[s or 0.0 for s in entry["test_accuracy_std"]],
            marker="o",
            capsize=4,
        )
        sparse_axis.plot(
            entry["strength"],
            [s if s is not None else np.nan for s in entry["sparsity"]],
            marker="o",
        )
        for axis, key, ylabel in (
            (acc_axis, "baseline_test_accuracy", "test accuracy"),
            (sparse_axis, "baseline_sparsity", "share of |w| below threshold"),
        ):
            if entry[key] is not None:
                axis.axhline(entry[key], color=BASELINE_COLOUR, linestyle="--", label=baseline)
                axis.legend(fontsize=8)
            axis.set_xscale("log")
            # Ticks at the swept strengths only: minor log ticks crowd a short range.
            axis.xaxis.set_minor_formatter(NullFormatter())
            axis.set_xticks(entry["strength"], [f"{value:g}" for value in entry["strength"]])
            axis.set_xlabel(sweep.label)
            axis.set_ylabel(ylabel)
            axis.grid(alpha=0.3, which="both")
        acc_axis.set_title(f"{sweep.label}: test accuracy", fontsize=10)
        sparse_axis.set_title(f"{sweep.label}: kernel sparsity", fontsize=10)
    figure.tight_layout()
    _save(figure, path)
    return series


def confusion_figure(confusion: np.ndarray, class_names: Sequence[str], title: str) -> Any:
    """A labelled heat map of counts (rows actual, columns predicted), outside pyplot."""
    confusion = np.asarray(confusion)
    figure = agg_figure(figsize=(7.5, 6.5))
    axis = figure.subplots()
    image = axis.imshow(confusion, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046)
    ticks = np.arange(len(class_names))
    axis.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    axis.set_yticks(ticks, class_names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, column), count in np.ndenumerate(confusion):
        axis.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if count > threshold else "black",
        )
    axis.set_title(title)
    figure.tight_layout()
    return figure
