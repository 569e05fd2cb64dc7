"""Statistics across seeds, the significance rule, and strength sweeps among the recipes.

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

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reglab.core.digest import flatten

log = logging.getLogger(__name__)

BASELINE = "baseline"
SIGNIFICANCE_RULE = (
    "a difference from the baseline is significant only when it exceeds the sum of the two "
    "standard deviations over seeds (the mean ± std intervals do not overlap); "
    "n.s. = not significant; with a single seed there is no noise estimate and no verdict"
)


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


def mean_curve(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float | None]]:
    """Per-epoch mean and std over seeds; seeds that stopped early drop out of later epochs."""
    length = max(len(curve) for curve in curves)
    means, stds = [], []
    for epoch in range(length):
        values = [curve[epoch] for curve in curves if len(curve) > epoch]
        means.append(float(np.mean(values)))
        stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else None)
    return means, stds


# ---------------------------------------------------------------------------
# Strength sweeps, read from the recipes.


def flatten_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Leaves of a nested recipe: {"kernel.l2": 0.001, "orthogonal.mode": "rows", ...}."""
    return {
        name: tuple(value) if isinstance(value, list) else value
        for name, value in flatten(recipe).items()
        if not isinstance(value, Mapping)
    }


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
