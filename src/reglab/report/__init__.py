"""Comparison across variants: the leaderboard, the significance test and the figures.

Input is plain values: the eval reports (one per variant and seed, as written by
the evaluate stage), the per-epoch histories, the first-layer kernels and the
regularizer recipes. The work is split by concern:

- :mod:`reglab.report.load`: reading the reports, histories and weights files;
- :mod:`reglab.report.stats`: statistics over seeds, the paired tests against the
  baseline with Holm's correction, the seeds needed for power, sweeps;
- :mod:`reglab.report.figures`: the PNGs, each returning the numbers it drew;
- :mod:`reglab.report.render`: the Markdown summary and the DVC plot CSVs.

:func:`compare` ties them together; the compare stage hands the result to
:mod:`reglab.tracking`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reglab.report import figures as fig
from reglab.report.load import (
    ReportError,
    load_dense_histograms,
    load_first_layer_kernels,
    load_histories,
    load_history,
    load_reports,
    load_weights,
)
from reglab.report.render import leaderboard_csv, learning_curves_csv, summary_markdown
from reglab.report.stats import (
    BASELINE,
    Delta,
    Stat,
    Sweep,
    VariantSummary,
    adjust,
    compare_to_baseline,
    holm,
    seeds_for_power,
    strength_sweeps,
    summarize,
)

__all__ = [
    "BASELINE",
    "FIGURE_FILES",
    "Comparison",
    "Delta",
    "ReportError",
    "Stat",
    "Sweep",
    "VariantSummary",
    "adjust",
    "compare",
    "compare_to_baseline",
    "comparison_metrics",
    "comparison_tags",
    "holm",
    "load_dense_histograms",
    "load_first_layer_kernels",
    "load_histories",
    "load_history",
    "load_reports",
    "load_weights",
    "seeds_for_power",
    "strength_sweeps",
    "summarize",
]

log = logging.getLogger(__name__)

FIGURE_FILES = {
    "validation_loss": "val_data_loss.png",
    "test_metrics": "test_metrics.png",
    "weight_histograms": "first_layer_weights.png",
    "dense_weight_histograms": "largest_dense_weights.png",
    "strength_sweep": "strength_sweep.png",
}


@dataclass
class Comparison:
    summaries: list[VariantSummary]
    markdown: str
    figures: dict[str, Path] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    sweeps: list[Sweep] = field(default_factory=list)
    # File name -> CSV text, for the DVC plots folder.
    plot_data: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> VariantSummary:
        return self.summaries[0]


def compare(
    reports: Mapping[str, Sequence[Mapping[str, Any]]],
    histories: Mapping[str, Sequence[Mapping[str, Sequence[float]]]],
    kernels: Mapping[str, np.ndarray],
    recipes: Mapping[str, Mapping[str, Any]],
    *,
    figures_dir: Path,
    summary_path: Path,
    baseline: str = BASELINE,
    dense_histograms: Mapping[str, Mapping[str, Any]] | None = None,
) -> Comparison:
    """Leaderboard, figures and summary text from plain inputs.

    ``histories`` holds one history per seed for each variant; ``kernels`` the
    first-layer kernel of one seed per variant, ``dense_histograms`` the largest Dense
    kernel's counts on fixed bins of the same runs. Missing inputs for a figure skip
    that figure with a warning rather than failing the whole report.
    """
    if not reports:
        raise ReportError("no eval reports to compare")
    summaries = summarize(reports, baseline)
    figures: dict[str, Path] = {}
    series: dict[str, Any] = {}

    def draw(name: str, function: Any, *args: Any, **kwargs: Any) -> None:
        path = figures_dir / FIGURE_FILES[name]
        series[name] = function(*args, path, **kwargs)
        figures[name] = path

    if histories:
        draw("validation_loss", fig.validation_loss_figure, histories)
    draw("test_metrics", fig.accuracy_loss_figure, summaries, baseline=baseline)
    if baseline in kernels and len(kernels) > 1:
        draw("weight_histograms", fig.weight_histogram_figure, kernels, baseline=baseline)
    else:
        log.warning("weight histograms skipped: need the baseline's and another variant's kernel")
    dense_histograms = dense_histograms or {}
    if baseline in dense_histograms and len(dense_histograms) > 1:
        draw(
            "dense_weight_histograms",
            fig.dense_histogram_figure,
            dense_histograms,
            baseline=baseline,
            variants=list(reports),
        )
    elif dense_histograms:
        log.warning("largest Dense kernel histograms skipped: need the baseline's and another's")
    sweeps = strength_sweeps({name: recipes[name] for name in reports if name in recipes})
    if sweeps:
        draw("strength_sweep", fig.strength_sweep_figure, sweeps, summaries, baseline=baseline)
    else:
        log.info("no strength sweep among the variants (see strength_sweeps for the rule)")
    for name, filename in FIGURE_FILES.items():
        if name not in figures:  # a figure from an earlier run no longer applies
            (figures_dir / filename).unlink(missing_ok=True)
    markdown = summary_markdown(summaries, figures, summary_path, baseline, sweeps)
    plot_data = {"leaderboard.csv": leaderboard_csv(summaries)}
    if "validation_loss" in series:
        plot_data["val_data_loss.csv"] = learning_curves_csv(series["validation_loss"])
    return Comparison(summaries, markdown, figures, series, sweeps, plot_data)


DELTA_METRICS = (
    ("test_accuracy", "accuracy_vs_baseline"),
    ("test_data_loss", "data_loss_vs_baseline"),
)


def comparison_metrics(comparison: Comparison) -> dict[str, float]:
    """The compare run's headline metrics: every variant's means, its difference from the
    baseline with the confidence interval, the Holm-adjusted p-value and the verdict (1 for
    significant, 0 for not; left out with one seed), and the best variant's."""
    metrics = {}
    for row in comparison.summaries:
        for key, attribute in DELTA_METRICS:
            metrics[f"{key}/{row.variant}"] = getattr(row, key).mean
            delta = getattr(row, attribute)
            if delta is None:
                continue
            metrics[f"{key}_vs_baseline/{row.variant}"] = delta.difference
            values = {
                "ci_low": delta.ci_low,
                "ci_high": delta.ci_high,
                "p_holm": delta.p_holm,
                "significant": None if delta.significant is None else float(delta.significant),
            }
            for name, value in values.items():
                if value is not None:
                    metrics[f"{key}_vs_baseline_{name}/{row.variant}"] = value
    best = comparison.best
    metrics["best/test_accuracy"] = best.test_accuracy.mean
    if best.accuracy_vs_baseline:
        metrics["best/accuracy_vs_baseline"] = best.accuracy_vs_baseline.difference
        if best.accuracy_vs_baseline.significant is not None:
            metrics["best/accuracy_vs_baseline_significant"] = float(
                best.accuracy_vs_baseline.significant
            )
    return {key: value for key, value in metrics.items() if math.isfinite(value)}


def comparison_tags(comparison: Comparison) -> dict[str, str]:
    """The compare run's verdict tags, per metric: the variants whose difference from the
    baseline is significant (Holm-adjusted p < 0.05), comma-separated, "none", or "no
    verdict" when no variant has two seeds on both sides."""
    tags = {}
    for key, attribute in DELTA_METRICS:
        deltas = {
            row.variant: getattr(row, attribute)
            for row in comparison.summaries
            if getattr(row, attribute) is not None
        }
        judged = {name: delta for name, delta in deltas.items() if delta.significant is not None}
        if not deltas:
            continue
        significant = sorted(name for name, delta in judged.items() if delta.significant)
        tags[f"significant/{key}"] = (
            ",".join(significant) if significant else "none" if judged else "no verdict"
        )
    return tags
