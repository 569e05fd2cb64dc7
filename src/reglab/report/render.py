"""Rendering the comparison: the Markdown summary and the CSVs behind DVC's plots."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from reglab.report.stats import (
    ALPHA,
    BASELINE,
    CONFIDENCE,
    MAX_SEEDS,
    POWER,
    SIGNIFICANCE_RULE,
    Delta,
    Stat,
    Sweep,
    VariantSummary,
)


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


def _p(value: float | None) -> str:
    if value == 0:
        return "0 (no spread)"  # every seed moved by the same amount
    return "–" if value is None else f"{value:.2g}"


def _verdict(delta: Delta | None) -> str:
    if delta is None or delta.significant is None:
        return "single seed, no noise estimate"
    word = "significant" if delta.significant else "not significant"
    return f"{word}, Holm-adjusted p = {_p(delta.p_holm)}"


def _seeds_needed(delta: Delta) -> str:
    if delta.test != "paired":
        return "–"
    if delta.seeds_needed is None:
        return "no difference" if delta.difference == 0 else f"> {MAX_SEEDS:,}"
    return str(delta.seeds_needed)


def _needs_more_seeds(delta: Delta) -> bool:
    """Whether a difference not found significant would need more seeds than were run for a
    paired test to tell it."""
    if delta.test != "paired" or delta.significant is not False or delta.difference == 0:
        return False
    return delta.seeds_needed is None or delta.seeds_needed > delta.n


DIFFERENCE_METRICS = (
    ("test data loss", "data_loss_vs_baseline", "test_data_loss"),
    ("test accuracy", "accuracy_vs_baseline", "test_accuracy"),
)


def differences_markdown(summaries: Sequence[VariantSummary], baseline: str = BASELINE) -> str:
    """Per metric, each variant's difference from the baseline: the paired mean difference
    and its confidence interval, the p-values, the verdict and the seeds a paired t-test
    would need to tell a difference of the observed size."""
    rows = [row for row in summaries if row.variant != baseline and row.data_loss_vs_baseline]
    if not rows:
        return f"No {baseline!r} variant and another to compare with it."
    level = f"{CONFIDENCE * 100:.0f} % CI"
    parts = []
    for title, attribute, key in DIFFERENCE_METRICS:
        parts += [
            f"**{title}** (variant − baseline)",
            "",
            f"| variant | test | seeds | Δ | {level} | p | Holm p | verdict "
            f"| seeds for {POWER * 100:.0f} % power |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        best_first = -1 if key == "test_accuracy" else 1
        for row in sorted(rows, key=lambda row: best_first * getattr(row, key).mean):
            delta = getattr(row, attribute)
            interval = (
                "–" if delta.ci_low is None else f"[{delta.ci_low:+.4f}, {delta.ci_high:+.4f}]"
            )
            verdict = {True: "significant", False: "n.s.", None: "no verdict"}[delta.significant]
            cells = [
                row.variant,
                delta.test or "–",
                str(delta.n),
                f"{delta.difference:+.4f}",
                interval,
                _p(delta.p_value),
                _p(delta.p_holm),
                verdict,
                _seeds_needed(delta),
            ]
            parts.append("| " + " | ".join(cells) + " |")
        parts.append("")
    paired = any(
        getattr(row, attribute).test == "paired"
        for row in rows
        for _, attribute, _ in DIFFERENCE_METRICS
    )
    short = []
    for row in rows:
        needs = [
            f"{_seeds_needed(delta)} seeds for its {title} difference of {delta.difference:+.4f}"
            for title, attribute, _ in DIFFERENCE_METRICS
            if _needs_more_seeds(delta := getattr(row, attribute))
        ]
        if needs:
            short.append(f"{row.variant} ({', '.join(needs)}; {len(row.seeds)} run)")
    parts.append(
        f"Paired: over the seeds both were trained under; Welch: the seeds differ. "
        f"The interval is Student's t; Holm's correction is per metric, across the "
        f"variants. Seeds for {POWER * 100:.0f} % power: how many seeds a two-sided paired "
        f"t-test at α = {ALPHA} (before the correction) needs to tell a difference of the "
        "observed size, given the observed standard deviation of the paired differences."
    )
    if short:
        parts[-1] += (
            " Not significant, and more seeds than were run needed to tell the observed "
            "difference: " + "; ".join(short) + ". Add seeds before reading such an “n.s.” "
            "as no effect."
        )
    elif not paired:
        parts[-1] += " One seed (or no paired seeds): no estimate."
    return "\n".join(parts)


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
    spread = f"{len(clear)} of them significantly" if judged else "one seed, no verdict"
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
        "## Differences from the baseline",
        "",
        differences_markdown(summaries, baseline),
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


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """CSV through the csv module, so a name with a comma or a quote stays one field."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def learning_curves_csv(curves: Mapping[str, Mapping[str, Sequence[Any]]]) -> str:
    """Long format, one row per variant and epoch, for a template that colours by ``variant``.

    Long rather than wide so that dvc.yaml need not list the variant names.
    """
    rows = []
    for variant, curve in curves.items():
        train = curve.get("train_data_loss") or [None] * len(curve["epoch"])
        for epoch, val, tr in zip(curve["epoch"], curve["val_data_loss"], train, strict=True):
            rows.append((variant, epoch, val, tr))  # None is written as an empty field
    return csv_text(("variant", "epoch", "val_data_loss", "train_data_loss"), rows)


def leaderboard_csv(summaries: Sequence[VariantSummary]) -> str:
    """Mean test metrics per variant, and the test accuracy's mean ± std over seeds
    (``test_accuracy_low``/``_high``, the mean itself for one seed): the leaderboard
    template's point and error bar."""
    rows = []
    for row in summaries:
        accuracy = row.test_accuracy
        spread = accuracy.std or 0.0
        rows.append(
            (
                row.variant,
                accuracy.mean,
                accuracy.mean - spread,
                accuracy.mean + spread,
                row.test_data_loss.mean,
                row.generalization_gap.mean,
                len(row.seeds),
            )
        )
    columns = ("variant", "test_accuracy", "test_accuracy_low", "test_accuracy_high")
    return csv_text((*columns, "test_data_loss", "generalization_gap", "seeds"), rows)
