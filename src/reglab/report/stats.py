"""Statistics across seeds, the significance test, and strength sweeps among the recipes.

Seeds and noise. A variant trained under several seeds is summarized by the
mean and the sample standard deviation (ddof=1) over its seeds.

Comparing with the baseline. Every variant shares its seeds with the baseline
(the same seed gives the same initial weights and the same batch order), so the
comparison is *paired*: for each seed both were trained under, the variant's
value minus the baseline's. Over those differences:

- the mean paired difference and its 95 % confidence interval (Student's t,
  ``mean ± t(0.975, n − 1) · sd / √n``);
- the paired t-test's two-sided p-value (:func:`scipy.stats.ttest_rel`);
- when the seeds are not paired (the two sets of seeds differ), Welch's t-test
  (:func:`scipy.stats.ttest_ind` with ``equal_var=False``) over all seeds of each
  side, and its confidence interval of the difference of the means.

Several variants are compared with one baseline at once, so the p-values of one
metric (one family: the variants with a p-value) are adjusted by Holm's step-down
method (:func:`holm`). A difference is *significant* when its Holm-adjusted
p-value is below :data:`ALPHA`. With fewer than two seeds on either side there is
no estimate of the noise: the difference is reported without a verdict.

:func:`seeds_for_power` says roughly how many seeds a paired t-test would need to
tell a difference of the observed size, from the observed standard deviation of
the paired differences, at 80 % power.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from reglab.core.digest import flatten

log = logging.getLogger(__name__)

BASELINE = "baseline"
ALPHA = 0.05
CONFIDENCE = 0.95
POWER = 0.80
MAX_SEEDS = 1000  # seeds_for_power gives up beyond this (None: "more than 1,000")
SIGNIFICANCE_RULE = (
    "each variant is compared with the baseline over the seeds both were trained under "
    "(a paired t-test on the per-seed differences; Welch's t-test where the seeds differ), "
    "with Holm's correction across the variants; a difference is significant when its "
    "Holm-adjusted p-value is below 0.05; n.s. = not significant; with a single seed there "
    "is no noise estimate and no verdict"
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
    """A variant minus the baseline, with the test of this module's docstring.

    ``difference`` is the mean paired difference (``test == "paired"``), else the
    difference of the means. ``n`` is the number of pairs (paired) or of the
    variant's seeds. Without a test (one seed) only ``difference`` and ``n`` are set;
    ``p_holm`` and ``significant`` are set once the family is adjusted (:func:`adjust`).
    """

    difference: float
    n: int
    test: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    p_holm: float | None = None
    difference_std: float | None = None  # of the paired differences
    seeds_needed: int | None = None  # for 80 % power at a difference of this size
    significant: bool | None = None

    def format(self, digits: int = 4) -> str:
        text = f"{self.difference:+.{digits}f}"
        return f"{text} (n.s.)" if self.significant is False else text


def _tolerance(*arrays: np.ndarray) -> float:
    """Below this a spread or a difference is zero but for rounding (the t statistic
    would be ±inf or 0/0, and scipy warns of catastrophic cancellation)."""
    return 1e-9 * max(1.0, max(float(np.max(np.abs(array))) for array in arrays))


def _no_noise(difference: float, n: int, test: str, tolerance: float) -> Delta:
    """Every seed moved by the same amount: nothing to test against. A difference is
    then certain (p = 0), no difference is none (p = 1)."""
    moved = abs(difference) > tolerance
    return Delta(
        difference,
        n,
        test,
        ci_low=difference,
        ci_high=difference,
        p_value=0.0 if moved else 1.0,
        difference_std=0.0 if test == "paired" else None,
        seeds_needed=2 if moved and test == "paired" else None,
    )


def compare_to_baseline(variant: Mapping[int, float], baseline: Mapping[int, float]) -> Delta:
    """One variant against the baseline, both given as ``{seed: value}``; not yet adjusted.

    Pairing: the seeds both were trained under are paired when there are at least two
    of them and they are most (more than half) of each side's seeds; the seeds only
    one side has are then left out, since they have no partner. Otherwise the two
    sets of seeds are compared unpaired, by Welch's t-test over all seeds of each side
    (a handful of shared seeds among many would pair too little of the data).
    """
    shared = sorted(set(variant) & set(baseline))
    paired = len(shared) >= 2 and 2 * len(shared) > max(len(variant), len(baseline))
    if paired:
        v = np.array([variant[seed] for seed in shared], dtype=np.float64)
        b = np.array([baseline[seed] for seed in shared], dtype=np.float64)
        differences = v - b
        n = len(shared)
        mean = float(differences.mean())
        sd = float(differences.std(ddof=1))
        if sd <= _tolerance(v, b):
            return _no_noise(mean, n, "paired", _tolerance(v, b))
        result = stats.ttest_rel(v, b)
        interval = result.confidence_interval(CONFIDENCE)
        return Delta(
            difference=mean,
            n=n,
            test="paired",
            ci_low=float(interval.low),
            ci_high=float(interval.high),
            statistic=float(result.statistic),
            p_value=float(result.pvalue),
            difference_std=sd,
            seeds_needed=seeds_for_power(mean, sd),
        )
    v = np.array(list(variant.values()), dtype=np.float64)
    b = np.array(list(baseline.values()), dtype=np.float64)
    mean = float(v.mean() - b.mean())
    if len(v) < 2 or len(b) < 2:
        return Delta(mean, len(v))
    if math.hypot(v.std(ddof=1), b.std(ddof=1)) <= _tolerance(v, b):
        return _no_noise(mean, len(v), "welch", _tolerance(v, b))
    result = stats.ttest_ind(v, b, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return Delta(
        difference=mean,
        n=len(v),
        test="welch",
        ci_low=float(interval.low),
        ci_high=float(interval.high),
        statistic=float(result.statistic),
        p_value=float(result.pvalue),
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment, in the order given.

    Hand-written because scipy has none (its ``false_discovery_control`` is
    Benjamini-Hochberg, which bounds the false discovery rate, not the family-wise
    error rate Holm's method bounds). The i-th smallest of m p-values is multiplied
    by m − i (i from 0), then made non-decreasing in that order and capped at 1.
    """
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def adjust(deltas: Mapping[str, Delta], alpha: float = ALPHA) -> dict[str, Delta]:
    """Holm-adjust one metric's family of comparisons and give each tested one its verdict."""
    tested = [name for name, delta in deltas.items() if delta.p_value is not None]
    adjusted = dict(zip(tested, holm([deltas[name].p_value for name in tested]), strict=True))
    return {
        name: dataclasses.replace(delta, p_holm=adjusted[name], significant=adjusted[name] < alpha)
        if name in adjusted
        else delta
        for name, delta in deltas.items()
    }


def paired_power(n: int, effect: float, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs at a standardized
    difference ``effect`` (mean difference / sd of the differences): the noncentral
    t's mass beyond the critical values, noncentrality ``effect · √n``, n − 1 df."""
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect * math.sqrt(n)
    return float(
        stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
    )


def seeds_for_power(
    difference: float, sd: float, power: float = POWER, alpha: float = ALPHA
) -> int | None:
    """The fewest seeds (pairs) for which a paired t-test tells ``difference`` at ``power``,
    given ``sd`` of the paired differences; None for no difference or beyond MAX_SEEDS."""
    if difference == 0 or not math.isfinite(difference):
        return None
    if sd == 0:
        return 2
    effect = abs(difference) / sd
    # Upwards from 2 (power grows with n), stopping at the first n that reaches it: the
    # noncentral t stays where scipy computes it well (its tail turns nan for a very
    # large noncentrality, a bisection up from MAX_SEEDS would meet that).
    for n in range(2, MAX_SEEDS + 1):
        if paired_power(n, effect, alpha) >= power:
            return n
    return None


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

    def as_dict(self) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, (Stat, Delta)):
                return dict(value.__dict__)
            return value

        return {key: plain(value) for key, value in self.__dict__.items()}


def _optional_stat(reports: Sequence[Mapping[str, Any]], key: str) -> Stat | None:
    values = [report[key] for report in reports if report.get(key) is not None]
    return Stat.of(values) if len(values) == len(reports) else None


def by_seed(runs: Sequence[Mapping[str, Any]], key: str) -> dict[int, float]:
    """``{seed: value}`` of one metric over a variant's runs."""
    return {int(run["seed"]): float(run[key]) for run in runs}


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
            )
        )
    by_name = {row.variant: row for row in rows}
    if baseline in by_name:
        others = [row.variant for row in rows if row.variant != baseline]

        def family(key: str) -> dict[str, Delta]:
            base = by_seed(reports[baseline], key)
            return adjust(
                {name: compare_to_baseline(by_seed(reports[name], key), base) for name in others}
            )

        accuracy, data_loss = family("test_accuracy"), family("test_data_loss")
        for name in others:
            by_name[name].accuracy_vs_baseline = accuracy[name]
            by_name[name].data_loss_vs_baseline = data_loss[name]
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
