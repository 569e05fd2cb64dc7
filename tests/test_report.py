"""The comparison on synthetic eval reports: order, significance, figures and their data."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from reglab import report as rp
from reglab.report import (
    ReportError,
    Stat,
    compare,
    compare_to_baseline,
    load_reports,
    strength_sweeps,
    summarize,
)


def make_report(variant, seed, accuracy, loss, **extra):
    return {
        "variant": variant,
        "seed": seed,
        "test_accuracy": accuracy,
        "test_data_loss": loss,
        "train_accuracy": accuracy + 0.05,
        "generalization_gap": 0.05,
        "data_loss_gap": 0.1,
        "ece": 0.02,
        "sparsity": extra.pop("sparsity", 0.0),
        "params_count": 1000,
        "epochs_trained": 10,
        "mlflow_run_id": f"run-{variant}-{seed}",
        "run_key": f"{variant}@{seed}",
        **extra,
    }


def multi_seed_reports():
    """baseline 0.81 ± 0.01; wide 0.82 ± 0.02 (inside the spread); clear 0.86 ± 0.01."""
    table = {
        "baseline": ([0.80, 0.81, 0.82], [0.60, 0.62, 0.64]),
        "wide": ([0.80, 0.82, 0.84], [0.59, 0.61, 0.63]),
        "clear": ([0.85, 0.86, 0.87], [0.40, 0.41, 0.42]),
    }
    return {
        variant: [
            make_report(variant, seed, acc_value, loss_value)
            for seed, acc_value, loss_value in zip((1, 2, 3), acc, loss, strict=True)
        ]
        for variant, (acc, loss) in table.items()
    }


def test_single_seed_leaderboard_is_sorted_with_plain_differences():
    reports = {
        "baseline": [make_report("baseline", 42, 0.85, 0.50)],
        "l2": [make_report("l2", 42, 0.88, 0.35)],
        "l1": [make_report("l1", 42, 0.86, 0.40)],
    }
    rows = summarize(reports)
    assert [row.variant for row in rows] == ["l2", "l1", "baseline"]
    assert rows[0].accuracy_vs_baseline.difference == pytest.approx(0.03)
    assert rows[0].accuracy_vs_baseline.significant is None  # one seed: no verdict
    assert rows[0].test_accuracy.std is None
    assert rows[-1].accuracy_vs_baseline is None
    text = rp.best_variant_text(rows)
    assert "**l2**" in text and "+3.00 points" in text and "single seed" in text


def test_ties_sort_by_lower_data_loss_then_name():
    reports = {
        "b": [make_report("b", 1, 0.9, 0.3)],
        "a": [make_report("a", 1, 0.9, 0.3)],
        "c": [make_report("c", 1, 0.9, 0.2)],
    }
    assert [row.variant for row in summarize(reports, baseline="a")] == ["c", "a", "b"]


def test_significance_rule_with_several_seeds():
    rows = {row.variant: row for row in summarize(multi_seed_reports())}
    assert rows["baseline"].test_accuracy.mean == pytest.approx(0.81)
    assert rows["baseline"].test_accuracy.std == pytest.approx(0.01)
    wide = rows["wide"].accuracy_vs_baseline
    assert wide.difference == pytest.approx(0.01)
    assert wide.spread == pytest.approx(0.03)
    assert wide.significant is False
    clear = rows["clear"].accuracy_vs_baseline
    assert clear.difference == pytest.approx(0.05) and clear.significant is True
    # Data loss: clear is 0.21 lower (spread 0.03): significant; wide 0.01 lower: not.
    assert rows["clear"].data_loss_vs_baseline.significant is True
    assert rows["wide"].data_loss_vs_baseline.significant is False


def test_rule_needs_two_seeds_on_both_sides():
    one = Stat.of([0.9])
    several = Stat.of([0.5, 0.6])
    assert compare_to_baseline(several, one).significant is None
    assert compare_to_baseline(one, several).significant is None
    # Exactly at the spread counts as not significant (the rule is a strict >).
    assert compare_to_baseline(Stat(0.3, 0.1, 3), Stat(0.1, 0.1, 3)).significant is False


def test_markdown_marks_not_significant_and_shows_mean_and_std():
    rows = summarize(multi_seed_reports())
    table = rp.leaderboard_markdown(rows)
    lines = table.splitlines()
    assert lines[2].startswith("| 1 | clear | 3 | 0.8600 ± 0.0100 | +0.0500 |")
    assert "| 2 | wide | 3 | 0.8200 ± 0.0200 | +0.0100 (n.s.) |" in table
    assert "| 3 | **baseline** | 3 | 0.8100 ± 0.0100 | – |" in table
    loss_text = rp.data_loss_text(rows)
    assert "Baseline test data loss: 0.6200 ± 0.0200." in loss_text
    assert "- clear: 0.4100 ± 0.0100 (lower, -0.2100" in loss_text
    assert (
        "2 of 2 regularized variants have a lower test data loss than the baseline (1 of them"
        in loss_text
    )


def test_baseline_best_is_said_plainly():
    reports = {
        "baseline": [make_report("baseline", 1, 0.9, 0.3)],
        "l1": [make_report("l1", 1, 0.88, 0.3)],
    }
    text = rp.best_variant_text(summarize(reports))
    assert text.startswith("The baseline has the highest test accuracy")
    assert "**l1**, is 2.00 points behind" in text


def write_report(directory, name, report):
    report = {key: value for key, value in report.items() if key != "run_key"}
    (directory / f"{name}.json").write_text(json.dumps(report))


def test_load_reports_single_and_multi_seed_names(tmp_path):
    write_report(tmp_path, "baseline", make_report("baseline", 42, 0.8, 0.6))
    for seed in (1, 2):
        write_report(tmp_path, f"l2@{seed}", make_report("l2", seed, 0.8, 0.6))
    write_report(tmp_path, "l2_big@1", make_report("l2_big", 1, 0.8, 0.6))  # not an l2 seed
    reports = load_reports(tmp_path, ["baseline", "l2"])
    assert [r["run_key"] for r in reports["baseline"]] == ["baseline"]
    assert [r["run_key"] for r in reports["l2"]] == ["l2@1", "l2@2"]
    assert [r["seed"] for r in load_reports(tmp_path, ["l2"], seeds=[2])["l2"]] == [2]
    with pytest.raises(ReportError, match=r"no seeds \[3\] for variant 'l2'"):
        load_reports(tmp_path, ["l2"], seeds=[1, 3])
    with pytest.raises(
        ReportError, match="no report for variant .dropout.; run its evaluate stage first"
    ):
        load_reports(tmp_path, ["dropout"])


def test_load_reports_refuses_two_files_for_one_seed(tmp_path):
    write_report(tmp_path, "l2", make_report("l2", 7, 0.8, 0.6))
    write_report(tmp_path, "l2@7", make_report("l2", 7, 0.8, 0.6))
    with pytest.raises(ReportError, match="both hold l2 seed 7; delete the stale one"):
        load_reports(tmp_path, ["l2"])


def test_load_reports_checks_the_seed_in_the_name(tmp_path):
    write_report(tmp_path, "l2@7", make_report("l2", 8, 0.8, 0.6))
    with pytest.raises(ReportError, match="holds seed 8, its name says 7"):
        load_reports(tmp_path, ["l2"])


def test_load_history_reads_columns(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("epoch,train_data_loss,val_data_loss\n1,0.9,1.0\n2,0.5,0.8\n")
    assert rp.load_history(path) == {
        "epoch": [1.0, 2.0],
        "train_data_loss": [0.9, 0.5],
        "val_data_loss": [1.0, 0.8],
    }


def recipe(l1=0.0, l2=0.0, conv=0.0, dense=0.0):
    return {"kernel": {"l1": l1, "l2": l2}, "dropout": {"conv_rate": conv, "dense_rate": dense}}


def test_no_sweep_in_the_default_recipes():
    recipes = {
        "baseline": recipe(),
        "l1": recipe(l1=1e-4),
        "l2": recipe(l2=1e-3),
        "l1_l2": recipe(l1=1e-5, l2=1e-3),
        "dropout": recipe(conv=0.25, dense=0.5),
    }
    assert strength_sweeps(recipes) == []


def test_sweep_is_found_from_recipes_and_ordered_by_strength():
    recipes = {
        "baseline": recipe(),
        "l2_big": recipe(l2=1e-2),
        "l2_small": recipe(l2=1e-4),
        "l2": recipe(l2=1e-3),
        "l1": recipe(l1=1e-4),
        "l1_l2": recipe(l1=1e-5, l2=1e-3),  # differs from l2 in l1: not part of the l2 sweep
    }
    sweeps = strength_sweeps(recipes)
    assert len(sweeps) == 1
    assert sweeps[0].parameters == ("kernel.l2",)
    assert sweeps[0].variants == ["l2_small", "l2", "l2_big"]
    assert sweeps[0].strengths == [1e-4, 1e-3, 1e-2]


def test_keys_that_move_together_make_one_sweep_and_other_settings_split_it():
    recipes = {
        "baseline": recipe(),
        "dropout_10": recipe(conv=0.1, dense=0.1),
        "dropout_30": recipe(conv=0.3, dense=0.3),
        "dropout_50": recipe(conv=0.5, dense=0.5),
        "dropout_mixed": recipe(conv=0.25, dense=0.6),  # two strengths: in no sweep
        "l2_rows": {**recipe(l2=1e-3), "orthogonal": {"mode": "rows"}},
        "l2_cols": {**recipe(l2=1e-2), "orthogonal": {"mode": "columns"}},  # differs in mode
    }
    sweeps = strength_sweeps(recipes)
    assert [(s.parameters, s.variants, s.strengths) for s in sweeps] == [
        (
            ("dropout.conv_rate", "dropout.dense_rate"),
            ["dropout_10", "dropout_30", "dropout_50"],
            [0.1, 0.3, 0.5],
        )
    ]
    assert sweeps[0].label == "dropout.{conv_rate,dense_rate}"


def test_mean_curve_over_seeds_of_unequal_length():
    means, stds = rp.mean_curve([[1.0, 2.0, 3.0], [3.0, 4.0]])
    assert means == [2.0, 3.0, 3.0]
    assert stds[0] == pytest.approx(np.sqrt(2.0)) and stds[2] is None


def test_compare_writes_figures_with_the_expected_series(tmp_path):
    reports = {
        "baseline": [
            make_report("baseline", s, 0.80 + 0.01 * s, 0.70, sparsity=0.01) for s in (1, 2)
        ],
        "l2_small": [make_report("l2_small", s, 0.82, 0.55, sparsity=0.02) for s in (1, 2)],
        "l2": [make_report("l2", s, 0.84 + 0.001 * s, 0.50, sparsity=0.05) for s in (1, 2)],
        "dropout": [make_report("dropout", s, 0.83, 0.45, sparsity=0.0) for s in (1, 2)],
    }
    histories = {
        variant: [
            {
                "epoch": [1, 2, 3],
                "val_data_loss": [0.6, 0.5 + 0.1 * s, 0.7],
                "train_data_loss": [0.5, 0.4, 0.3],
            }
            for s in (1, 2)
        ]
        for variant in reports
    }
    rng = np.random.default_rng(0)
    kernels = {
        "baseline": rng.normal(0, 0.2, (3, 3, 1, 8)),
        "l2_small": rng.normal(0, 0.1, (3, 3, 1, 8)),
        "l2": rng.normal(0, 0.05, (3, 3, 1, 8)),
        "dropout": rng.normal(0, 0.2, (3, 3, 1, 8)),
    }
    recipes = {
        "baseline": recipe(),
        "l2_small": recipe(l2=1e-4),
        "l2": recipe(l2=1e-3),
        "dropout": recipe(conv=0.25, dense=0.5),
    }
    stale = tmp_path / "figures" / "unrelated.png"
    stale.parent.mkdir()
    stale.write_bytes(b"")
    result = compare(
        reports,
        histories,
        kernels,
        recipes,
        figures_dir=tmp_path / "figures",
        summary_path=tmp_path / "summary.md",
    )
    assert [row.variant for row in result.summaries] == ["l2", "dropout", "l2_small", "baseline"]
    for name, path in result.figures.items():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert set(result.figures) == {
        "validation_loss",
        "test_metrics",
        "weight_histograms",
        "strength_sweep",
    }

    curves = result.series["validation_loss"]
    assert set(curves) == set(reports)
    assert curves["l2"]["epoch"] == [1, 2, 3]
    assert curves["l2"]["val_data_loss"] == pytest.approx([0.6, 0.65, 0.7])
    assert curves["l2"]["val_data_loss_std"][1] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert curves["l2"]["train_data_loss"] == pytest.approx([0.5, 0.4, 0.3])

    histograms = result.series["weight_histograms"]
    assert histograms["baseline"] == "baseline"
    assert set(histograms["counts"]) == set(kernels)
    assert all(sum(counts) == 72 for counts in histograms["counts"].values())
    assert len(histograms["bin_edges"]) == len(histograms["counts"]["l2"]) + 1
    # L2 pulls weights toward zero: more of them in the central bins than the baseline.
    edges = np.asarray(histograms["bin_edges"])
    central = (np.abs(edges[:-1]) < 0.1) & (np.abs(edges[1:]) < 0.1)
    counts = histograms["counts"]
    assert np.sum(np.asarray(counts["l2"])[central]) > np.sum(
        np.asarray(counts["baseline"])[central]
    )

    sweep = result.series["strength_sweep"]["kernel.l2"]
    assert sweep["variants"] == ["l2_small", "l2"]
    assert sweep["strength"] == [1e-4, 1e-3]
    assert sweep["test_accuracy"] == pytest.approx([0.82, 0.8415])
    assert sweep["sparsity"] == pytest.approx([0.02, 0.05])
    assert sweep["baseline_test_accuracy"] == pytest.approx(0.815)

    bars = result.series["test_metrics"]
    assert bars["variant"] == ["l2", "dropout", "l2_small", "baseline"]
    assert bars["test_data_loss"] == pytest.approx([0.5, 0.45, 0.55, 0.7])

    curves_rows = list(csv.DictReader(io.StringIO(result.plot_data["val_data_loss.csv"])))
    assert len(curves_rows) == 4 * 3
    l2_epoch_2 = next(r for r in curves_rows if r["variant"] == "l2" and r["epoch"] == "2")
    assert float(l2_epoch_2["val_data_loss"]) == pytest.approx(0.65)
    assert float(l2_epoch_2["train_data_loss"]) == pytest.approx(0.4)
    board = list(csv.DictReader(io.StringIO(result.plot_data["leaderboard.csv"])))
    assert [r["variant"] for r in board] == ["l2", "dropout", "l2_small", "baseline"]
    assert float(board[0]["test_accuracy"]) == pytest.approx(0.8415)
    assert board[0]["seeds"] == "2"

    text = result.markdown
    assert "| 1 | l2 | 2 | 0.8415 ± 0.0007 |" in text
    assert "Best: **l2**" in text
    assert "](figures/val_data_loss.png)" in text
    assert "- kernel.l2: l2_small, l2" in text
    assert result.series["strength_sweep"]["kernel.l2"]["parameters"] == ["kernel.l2"]
    assert "significant only when it exceeds the sum of the two standard deviations" in text


def test_compare_skips_and_removes_figures_that_no_longer_apply(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "strength_sweep.png").write_bytes(b"old")
    reports = {
        "baseline": [make_report("baseline", 1, 0.8, 0.6)],
        "l2": [make_report("l2", 1, 0.81, 0.5)],
    }
    result = compare(
        reports,
        {},
        {},
        {"baseline": recipe(), "l2": recipe(l2=1e-3)},
        figures_dir=figures,
        summary_path=tmp_path / "summary.md",
    )
    assert set(result.figures) == {"test_metrics"}
    assert not (figures / "strength_sweep.png").exists()


def test_weight_histograms_need_the_baseline(tmp_path):
    with pytest.raises(ReportError, match="baseline"):
        rp.weight_histogram_figure({"l2": np.zeros(4)}, tmp_path / "w.png")
