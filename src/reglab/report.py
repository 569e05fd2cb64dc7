"""Comparison across variants: the leaderboard, the significance rule and the figures.

Input is plain values: the eval reports (one per variant and seed, as written by
the evaluate stage), the per-epoch histories, the first-layer kernels and the
regularizer recipes. Each figure function writes a PNG and returns the numbers
it drew, so tests (and the summary) can check the data, not the pixels.

Seeds and noise. A variant trained under several seeds is summarized by the
mean and the sample standard deviation (ddof=1) over its seeds. A difference
from the baseline counts as *significant* only when it is larger than the two
spreads added together::

    |mean(variant) - mean(baseline)| > std(variant) + std(baseline)

that is, when the mean ± std intervals of the two do not overlap. With fewer
than two seeds on either side there is no estimate of the noise and the
difference is reported without a verdict. This is a deliberately simple,
conservative rule of thumb, not a hypothesis test.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reglab.errors import ReglabError
from reglab.evaluation import SEED_SEPARATOR, parse_run_key

log = logging.getLogger(__name__)

BASELINE = "baseline"
SIGNIFICANCE_RULE = (
    "a difference from the baseline is significant only when it exceeds the sum of the two "
    "standard deviations over seeds (the mean ± std intervals do not overlap); "
    "n.s. = not significant; with a single seed there is no noise estimate and no verdict"
)
FIGURE_FILES = {
    "validation_loss": "val_data_loss.png",
    "test_metrics": "test_metrics.png",
    "weight_histograms": "first_layer_weights.png",
    "strength_sweep": "strength_sweep.png",
}


class ReportError(ReglabError):
    """The inputs of the compare stage are missing or inconsistent."""


# ---------------------------------------------------------------------------
# Loading.


def load_reports(
    eval_dir: Path, variants: Sequence[str], seeds: Sequence[int] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Eval reports by variant, each list sorted by seed.

    Reads ``<variant>.json`` (single seed) and ``<variant>@<seed>.json`` (one file per
    seed). Each report gets a ``run_key`` (its file stem) so its history and model
    can be found. With ``seeds`` given, exactly those seeds must be present and
    other seeds' files are ignored (a stale report from an earlier seeds list does
    not leak in). Two files for the same variant and seed are an error.
    """
    reports: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        paths = sorted(eval_dir.glob(f"{variant}{SEED_SEPARATOR}*.json"))
        single = eval_dir / f"{variant}.json"
        if single.exists():
            paths.insert(0, single)
        by_seed: dict[int, dict[str, Any]] = {}
        for path in paths:
            report = _read_report(path)
            name, file_seed = parse_run_key(path.stem)
            if report["variant"] != variant or name != variant:
                raise ReportError(
                    f"{path}: holds variant {report['variant']!r}, expected {variant!r}"
                )
            if file_seed is not None and file_seed != report["seed"]:
                raise ReportError(f"{path}: holds seed {report['seed']}, its name says {file_seed}")
            if seeds is not None and report["seed"] not in seeds:
                continue
            if report["seed"] in by_seed:
                other = by_seed[report["seed"]]["run_key"]
                raise ReportError(
                    f"{path} and {eval_dir / other}.json: both hold {variant} seed "
                    f"{report['seed']}; delete the stale one"
                )
            by_seed[report["seed"]] = {**report, "run_key": path.stem}
        missing = sorted(set(seeds) - set(by_seed)) if seeds is not None else []
        if not by_seed or missing:
            what = f"seeds {missing}" if missing else "report"
            raise ReportError(
                f"{eval_dir}: no {what} for variant {variant!r}; run its evaluate stage first"
            )
        reports[variant] = [by_seed[seed] for seed in sorted(by_seed)]
    return reports


def _read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path}: not valid JSON ({error.msg}); re-run its evaluate stage"
        ) from None
    needed = ("variant", "seed", "test_accuracy", "test_data_loss", "generalization_gap")
    missing = [key for key in needed if key not in report]
    if missing:
        raise ReportError(f"{path}: missing {missing}; re-run its evaluate stage")
    return report


def load_history(path: Path) -> dict[str, list[float]]:
    """A per-epoch history CSV as columns of floats."""
    if not path.exists():
        raise ReportError(f"{path}: not found; run the train stage for this variant")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "epoch" not in rows[0] or "val_data_loss" not in rows[0]:
        raise ReportError(
            f"{path}: needs a header with epoch and val_data_loss and one row per epoch"
        )
    return {column: [float(row[column]) for row in rows] for column in rows[0]}


def load_histories(
    history_dir: Path, reports: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, list[dict[str, list[float]]]]:
    """The history of every report's run (``<history_dir>/<run_key>.csv``), by variant."""
    return {
        variant: [load_history(history_dir / f"{run['run_key']}.csv") for run in runs]
        for variant, runs in reports.items()
    }


def load_first_layer_kernels(
    models_dir: Path, reports: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, np.ndarray]:
    """The first-layer kernel of each variant's lowest seed (one model per variant suffices
    to show the shape of the weight distribution)."""
    from reglab.evaluation import first_layer_kernel, load_model

    kernels = {}
    for variant, runs in reports.items():
        model_dir = models_dir / runs[0]["run_key"]
        _, kernels[variant] = first_layer_kernel(load_model(model_dir / "model.keras"))
    return kernels


# ---------------------------------------------------------------------------
# Statistics across seeds and the comparison with the baseline.


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation over seeds (std is None for one seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        array = np.asarray(values, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else None
        return cls(float(array.mean()), std, len(array))

    def format(self, digits: int = 4) -> str:
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class Delta:
    """A variant's mean minus the baseline's mean, with the verdict of the rule above."""

    difference: float
    spread: float | None
    significant: bool | None

    def format(self, digits: int = 4) -> str:
        text = f"{self.difference:+.{digits}f}"
        return f"{text} (n.s.)" if self.significant is False else text


def compare_to_baseline(variant: Stat, baseline: Stat) -> Delta:
    """Apply the significance rule of this module's docstring."""
    difference = variant.mean - baseline.mean
    if variant.std is None or baseline.std is None:
        return Delta(difference, None, None)
    spread = variant.std + baseline.std
    return Delta(difference, spread, abs(difference) > spread)


@dataclass
class VariantSummary:
    variant: str
    seeds: list[int]
    test_accuracy: Stat
    test_data_loss: Stat
    generalization_gap: Stat
    data_loss_gap: Stat
    ece: Stat | None
    sparsity: Stat | None
    params_count: int | None
    epochs_trained: Stat | None
    accuracy_vs_baseline: Delta | None = None
    data_loss_vs_baseline: Delta | None = None
    mlflow_run_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, (Stat, Delta)):
                return dict(value.__dict__)
            return value

        return {key: plain(value) for key, value in self.__dict__.items()}


def _optional_stat(reports: Sequence[Mapping[str, Any]], key: str) -> Stat | None:
    values = [report[key] for report in reports if report.get(key) is not None]
    return Stat.of(values) if len(values) == len(reports) else None


def summarize(
    reports: Mapping[str, Sequence[Mapping[str, Any]]], baseline: str = BASELINE
) -> list[VariantSummary]:
    """One row per variant, sorted by mean test accuracy (best first).

    Ties go to the lower test data loss, then to the name, so the order is stable.
    """
    rows = []
    for variant, runs in reports.items():
        params = {run.get("params_count") for run in runs}
        rows.append(
            VariantSummary(
                variant=variant,
                seeds=[int(run["seed"]) for run in runs],
                test_accuracy=Stat.of([run["test_accuracy"] for run in runs]),
                test_data_loss=Stat.of([run["test_data_loss"] for run in runs]),
                generalization_gap=Stat.of([run["generalization_gap"] for run in runs]),
                data_loss_gap=_optional_stat(runs, "data_loss_gap")
                or Stat.of([math.nan] * len(runs)),
                ece=_optional_stat(runs, "ece"),
                sparsity=_optional_stat(runs, "sparsity"),
                params_count=params.pop() if len(params) == 1 else None,
                epochs_trained=_optional_stat(runs, "epochs_trained"),
                mlflow_run_ids=[run["mlflow_run_id"] for run in runs if run.get("mlflow_run_id")],
            )
        )
    by_name = {row.variant: row for row in rows}
    if baseline in by_name:
        base = by_name[baseline]
        for row in rows:
            if row.variant != baseline:
                row.accuracy_vs_baseline = compare_to_baseline(
                    row.test_accuracy, base.test_accuracy
                )
                row.data_loss_vs_baseline = compare_to_baseline(
                    row.test_data_loss, base.test_data_loss
                )
    else:
        log.warning(
            "no %r variant among %s: no comparison with a baseline", baseline, sorted(by_name)
        )
    rows.sort(key=lambda row: (-row.test_accuracy.mean, row.test_data_loss.mean, row.variant))
    return rows


# ---------------------------------------------------------------------------
# Strength sweeps, read from the recipes.


def flatten_recipe(recipe: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Leaves of a nested recipe: {"kernel.l2": 0.001, "orthogonal.mode": "rows", ...}."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_recipe(value, name))
        else:
            flat[name] = tuple(value) if isinstance(value, list) else value
    return flat


def _is_strength(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@dataclass
class Sweep:
    """Variants whose recipes differ only in one strength (one or more keys moving together)."""

    parameters: tuple[str, ...]
    variants: list[str]
    strengths: list[float]

    @property
    def label(self) -> str:
        """``kernel.l2``, or for keys moving together ``dropout.{conv_rate,dense_rate}``."""
        if len(self.parameters) == 1:
            return self.parameters[0]
        prefix = os.path.commonprefix(list(self.parameters))
        prefix = prefix[: prefix.rfind(".") + 1]
        if not prefix:
            return " = ".join(self.parameters)
        return prefix + "{" + ",".join(key[len(prefix) :] for key in self.parameters) + "}"


def strength_sweeps(recipes: Mapping[str, Mapping[str, Any]]) -> list[Sweep]:
    """Find every strength sweep among the recipes.

    A sweep is a set of at least two variants and a set of keys P such that the
    variants' recipes agree on every key outside P, each variant holds one positive
    number on all keys of P (its strength: P is usually one key, e.g. ``kernel.l2``,
    or keys that move together, e.g. both dropout rates), and the strengths are not
    all equal. Variants at strength 0 (the baseline, usually) are left out: a log
    axis cannot show zero, so the figure draws the baseline as a reference line.
    """
    flat = {name: flatten_recipe(recipe) for name, recipe in recipes.items()}
    keys = sorted({key for values in flat.values() for key in values})
    flat = {name: {key: values.get(key) for key in keys} for name, values in flat.items()}

    def strength(name: str, parameters: tuple[str, ...]) -> float | None:
        values = {flat[name][key] for key in parameters}
        value = values.pop() if len(values) == 1 else None
        return float(value) if _is_strength(value) else None

    # Candidate key sets: where two variants differ, if both have one strength there.
    candidates = set()
    names = sorted(flat)
    for index, first in enumerate(names):
        for second in names[index + 1 :]:
            differing = tuple(k for k in keys if flat[first][k] != flat[second][k])
            if differing and strength(first, differing) and strength(second, differing):
                candidates.add(differing)

    sweeps, seen = [], set()
    for parameters in sorted(candidates):
        groups: dict[tuple[Any, ...], dict[str, float]] = {}
        for name in names:
            value = strength(name, parameters)
            if value is not None:
                rest = tuple(flat[name][k] for k in keys if k not in parameters)
                groups.setdefault(rest, {})[name] = value
        for members in groups.values():
            ordered = sorted(members, key=lambda name: (members[name], name))
            if len(set(members.values())) >= 2 and tuple(ordered) not in seen:
                seen.add(tuple(ordered))
                sweeps.append(Sweep(parameters, ordered, [members[name] for name in ordered]))
    return sweeps


# ---------------------------------------------------------------------------
# Figures. Each writes a PNG and returns the series it drew.


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    """Save through a temporary name so a killed stage leaves no half-written PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        figure.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(figure)


def mean_curve(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float | None]]:
    """Per-epoch mean and std over seeds; seeds that stopped early drop out of later epochs."""
    length = max(len(curve) for curve in curves)
    means, stds = [], []
    for epoch in range(length):
        values = [curve[epoch] for curve in curves if len(curve) > epoch]
        means.append(float(np.mean(values)))
        stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else None)
    return means, stds


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
    for index, (variant, runs) in enumerate(sorted(histories.items())):
        color = f"C{index % 10}"
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


def accuracy_loss_figure(summaries: Sequence[VariantSummary], path: Path) -> dict[str, Any]:
    """Test accuracy and test data loss per variant: points with ± std bars over seeds.

    Points rather than bars: the differences are small, so the axis cannot start at zero.
    """
    plt = _pyplot()
    names = [row.variant for row in summaries]
    several = any(row.test_accuracy.std is not None for row in summaries)
    series: dict[str, Any] = {"variant": names}
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    positions = np.arange(len(names))
    for axis, key in zip(axes, ("test_accuracy", "test_data_loss"), strict=True):
        stats = [getattr(row, key) for row in summaries]
        series[key] = [stat.mean for stat in stats]
        series[f"{key}_std"] = [stat.std for stat in stats]
        for index, stat in enumerate(stats):
            axis.errorbar(
                positions[index],
                stat.mean,
                yerr=stat.std or 0.0,
                fmt="o",
                capsize=5 if stat.std else 0,
                color=f"C{index % 10}",
            )
        axis.set_xticks(positions, names, rotation=30)
        axis.set_xlim(-0.5, len(names) - 0.5)
        suffix = " (mean ± std over seeds)" if several else ""
        axis.set_title(key.replace("_", " ") + suffix)
        axis.grid(axis="y", alpha=0.3)
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
    columns = min(3, max(1, len(others)))
    rows = max(1, -(-len(others) // columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4.5 * columns, 3.3 * rows), squeeze=False, sharex=True
    )
    for axis, name in zip(axes.ravel(), others, strict=False):
        axis.stairs(counts[baseline], edges, fill=True, alpha=0.45, color="grey", label=baseline)
        axis.stairs(counts[name], edges, color="C1", linewidth=1.8, label=name)
        axis.set_title(f"{name} vs {baseline}", fontsize=9)
        axis.set_xlabel("weight")
        axis.set_ylabel("count")
        axis.legend(fontsize=7)
    for axis in axes.ravel()[len(others) :]:
        axis.set_visible(False)
    figure.suptitle("First-layer kernel weights")
    figure.tight_layout()
    _save(figure, path)
    return {"bin_edges": edges.tolist(), "counts": counts, "baseline": baseline}


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
                axis.axhline(entry[key], color="grey", linestyle="--", label=baseline)
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


# ---------------------------------------------------------------------------
# The summary.


def _fmt(stat: Stat | None, digits: int = 4) -> str:
    return "–" if stat is None or math.isnan(stat.mean) else stat.format(digits)


def leaderboard_markdown(summaries: Sequence[VariantSummary], baseline: str = BASELINE) -> str:
    header = (
        "| rank | variant | seeds | test accuracy | Δ accuracy vs baseline | test data loss "
        "| Δ data loss vs baseline | accuracy gap (train − test) | data loss gap (test − train) "
        "| ECE | sparsity | parameters | epochs |"
    )
    lines = [header, "|" + "---|" * header.count(" | ") + "---|"]
    for rank, row in enumerate(summaries, start=1):
        name = f"**{row.variant}**" if row.variant == baseline else row.variant
        epochs = row.epochs_trained
        epochs = "–" if epochs is None else epochs.format(1 if epochs.std is not None else 0)
        cells = [
            str(rank),
            name,
            str(len(row.seeds)),
            _fmt(row.test_accuracy),
            row.accuracy_vs_baseline.format() if row.accuracy_vs_baseline else "–",
            _fmt(row.test_data_loss),
            row.data_loss_vs_baseline.format() if row.data_loss_vs_baseline else "–",
            _fmt(row.generalization_gap),
            _fmt(row.data_loss_gap),
            _fmt(row.ece),
            _fmt(row.sparsity, 3),
            f"{row.params_count:,}" if row.params_count is not None else "–",
            epochs,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict(delta: Delta | None) -> str:
    if delta is None or delta.significant is None:
        return "single seed, no noise estimate"
    return "significant" if delta.significant else "not significant"


def best_variant_text(summaries: Sequence[VariantSummary], baseline: str = BASELINE) -> str:
    best = summaries[0]
    if best.variant == baseline:
        runner_up = summaries[1] if len(summaries) > 1 else None
        text = f"The baseline has the highest test accuracy ({best.test_accuracy.format()})."
        if runner_up and runner_up.accuracy_vs_baseline:
            delta = runner_up.accuracy_vs_baseline
            text += (
                f" The best regularized variant, **{runner_up.variant}**, is "
                f"{abs(delta.difference) * 100:.2f} points behind ({_verdict(delta)})."
            )
        return text
    delta = best.accuracy_vs_baseline
    if delta is None:
        return f"Best: **{best.variant}** with test accuracy {best.test_accuracy.format()}."
    base = next(row for row in summaries if row.variant == baseline)
    return (
        f"Best: **{best.variant}** with test accuracy {best.test_accuracy.format()}, "
        f"{delta.difference * 100:+.2f} points over the baseline ({base.test_accuracy.format()}); "
        f"{_verdict(delta)}."
    )


def data_loss_text(summaries: Sequence[VariantSummary], baseline: str = BASELINE) -> str:
    """Does regularization lower the test data loss of the (overfitting) baseline?"""
    base = next((row for row in summaries if row.variant == baseline), None)
    if base is None:
        return f"No {baseline!r} variant, so no comparison of test data loss."
    others = [row for row in summaries if row.variant != baseline and row.data_loss_vs_baseline]
    lines = [f"Baseline test data loss: {base.test_data_loss.format()}.", ""]
    for row in sorted(others, key=lambda row: row.test_data_loss.mean):
        delta = row.data_loss_vs_baseline
        assert delta is not None  # noqa: S101 - filtered above
        direction = "lower" if delta.difference < 0 else "higher"
        relative = (
            delta.difference / base.test_data_loss.mean * 100 if base.test_data_loss.mean else 0
        )
        lines.append(
            f"- {row.variant}: {row.test_data_loss.format()} ({direction}, "
            f"{delta.difference:+.4f}, {relative:+.1f}%; {_verdict(delta)})"
        )
    lower = [row for row in others if row.data_loss_vs_baseline.difference < 0]
    clear = [row for row in lower if row.data_loss_vs_baseline.significant]
    judged = all(row.data_loss_vs_baseline.significant is not None for row in others)
    spread = f"{len(clear)} of them beyond the seeds' spread" if judged else "one seed, no verdict"
    lines += [
        "",
        f"{len(lower)} of {len(others)} regularized variants have a lower test data loss than "
        f"the baseline ({spread}).",
    ]
    return "\n".join(lines)


def summary_markdown(
    summaries: Sequence[VariantSummary],
    figures: Mapping[str, Path],
    summary_path: Path,
    baseline: str = BASELINE,
    sweeps: Sequence[Sweep] = (),
) -> str:
    seeds = sorted({len(row.seeds) for row in summaries})
    seeds_text = " or ".join(str(n) for n in seeds)
    parts = [
        "# Regularization comparison",
        "",
        f"Held-out test set; {len(summaries)} variants, {seeds_text} seed(s) each; "
        "mean ± sample std over seeds where there are several. Data loss is the "
        "cross-entropy alone (no penalty). Sorted by test accuracy.",
        "",
        leaderboard_markdown(summaries, baseline),
        "",
        f"Significance: {SIGNIFICANCE_RULE}.",
        "",
        "## Best variant",
        "",
        best_variant_text(summaries, baseline),
        "",
        "## Does regularization lower the test data loss?",
        "",
        data_loss_text(summaries, baseline),
    ]
    if sweeps:
        parts += ["", "## Strength sweeps", ""]
        parts += [f"- {sweep.label}: {', '.join(sweep.variants)}" for sweep in sweeps]
    if figures:
        parts += ["", "## Figures", ""]
        for name, path in figures.items():
            relative = os.path.relpath(path, summary_path.parent)
            parts.append(f"- {name.replace('_', ' ')}: ![{name}]({relative})")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------
# DVC plot data: CSVs that `dvc plots show` / `dvc plots diff` render.


def learning_curves_csv(curves: Mapping[str, Mapping[str, Sequence[Any]]]) -> str:
    """Long format, one row per variant and epoch, for a template that colours by ``variant``.

    Long rather than wide so that dvc.yaml need not list the variant names.
    """
    lines = ["variant,epoch,val_data_loss,train_data_loss"]
    for variant, curve in curves.items():
        train = curve.get("train_data_loss") or [None] * len(curve["epoch"])
        for epoch, val, tr in zip(curve["epoch"], curve["val_data_loss"], train, strict=True):
            lines.append(f"{variant},{epoch},{val!r},{'' if tr is None else repr(tr)}")
    return "\n".join(lines) + "\n"


def leaderboard_csv(summaries: Sequence[VariantSummary]) -> str:
    """Mean test metrics per variant (a bar template plots one column against ``variant``)."""
    lines = ["variant,test_accuracy,test_data_loss,generalization_gap,seeds"]
    for row in summaries:
        lines.append(
            f"{row.variant},{row.test_accuracy.mean!r},{row.test_data_loss.mean!r},"
            f"{row.generalization_gap.mean!r},{len(row.seeds)}"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# The whole comparison.


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
) -> Comparison:
    """Leaderboard, figures and summary text from plain inputs.

    ``histories`` holds one history per seed for each variant; ``kernels`` the
    first-layer kernel of one seed per variant. Missing inputs for a figure skip
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
        draw("validation_loss", validation_loss_figure, histories)
    draw("test_metrics", accuracy_loss_figure, summaries)
    if baseline in kernels and len(kernels) > 1:
        draw("weight_histograms", weight_histogram_figure, kernels, baseline=baseline)
    else:
        log.warning("weight histograms skipped: need the baseline's and another variant's kernel")
    sweeps = strength_sweeps({name: recipes[name] for name in reports if name in recipes})
    if sweeps:
        draw("strength_sweep", strength_sweep_figure, sweeps, summaries, baseline=baseline)
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


def common_parent(run_ids: Sequence[str]) -> str | None:
    """The parent run all the variants' runs are nested under, if they share one."""
    import mlflow

    client = mlflow.MlflowClient()
    parents = set()
    for run_id in run_ids:
        try:
            parents.add(client.get_run(run_id).data.tags.get("mlflow.parentRunId"))
        except mlflow.exceptions.MlflowException:
            log.warning(
                "MLflow run %s not found in this store; compare run stays top-level", run_id
            )
            return None
    return parents.pop() if len(parents) == 1 else None


def log_comparison(comparison: Comparison, tracking_uri: str, experiment: str) -> str:
    """A run named "compare" in the variants' experiment: summary, figures, headline metrics.

    Nested under the variants' pipeline run when they share one, so the UI shows
    the comparison next to the runs it compares.
    """
    import mlflow

    from reglab.tracking import configure

    configure(tracking_uri, experiment)
    run_ids = [run_id for row in comparison.summaries for run_id in row.mlflow_run_ids]
    parent = common_parent(run_ids) if run_ids else None
    tags = {"reglab.stage": "compare", "best_variant": comparison.best.variant}
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name="compare", tags=tags) as run:
        best = comparison.best
        metrics = {}
        for row in comparison.summaries:
            metrics[f"test_accuracy/{row.variant}"] = row.test_accuracy.mean
            metrics[f"test_data_loss/{row.variant}"] = row.test_data_loss.mean
        metrics["best/test_accuracy"] = best.test_accuracy.mean
        if best.accuracy_vs_baseline:
            metrics["best/accuracy_vs_baseline"] = best.accuracy_vs_baseline.difference
        mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
        mlflow.log_text(comparison.markdown, "summary.md")
        mlflow.log_dict([row.as_dict() for row in comparison.summaries], "leaderboard.json")
        for path in comparison.figures.values():
            mlflow.log_artifact(str(path), "figures")
        return run.info.run_id
