"""The comparison on synthetic eval reports: order, significance, figures and their data."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from reglab.model.weights import kernel_record
from reglab.report import (
    ReportError,
    Stat,
    compare,
    compare_to_baseline,
    comparison_metrics,
    load_first_layer_kernels,
    load_history,
    load_reports,
    strength_sweeps,
    summarize,
)
from reglab.report import figures as rf
from reglab.report import render as rr
from reglab.report.stats import mean_curve


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
    text = rr.best_variant_text(rows)
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
    table = rr.leaderboard_markdown(rows)
    lines = table.splitlines()
    assert lines[2].startswith("| 1 | clear | 3 | 0.8600 ± 0.0100 | +0.0500 |")
    assert "| 2 | wide | 3 | 0.8200 ± 0.0200 | +0.0100 (n.s.) |" in table
    assert "| 3 | **baseline** | 3 | 0.8100 ± 0.0100 | – |" in table
    loss_text = rr.data_loss_text(rows)
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
    text = rr.best_variant_text(summarize(reports))
    assert text.startswith("The baseline has the highest test accuracy")
    assert "**l1**, is 2.00 points behind" in text


def write_report(directory, name, report):
    report = {key: value for key, value in report.items() if key != "run_key"}
    (directory / f"{name}.json").write_text(json.dumps(report))


def test_load_reports_by_run_key(tmp_path, caplog):
    for seed in (1, 2):
        write_report(tmp_path, f"l2@{seed}", make_report("l2", seed, [0.81, 0.82][seed - 1], 0.6))
    write_report(tmp_path, "baseline@42", make_report("baseline", 42, 0.7, 0.6))
    write_report(tmp_path, "l2_big@1", make_report("l2_big", 1, 0.8, 0.6))  # not an l2 seed
    write_report(tmp_path, "l2", make_report("l2", 9, 0.1, 0.6))  # the old single-seed name
    reports = load_reports(tmp_path, ["baseline", "l2"])
    assert [r["run_key"] for r in reports["baseline"]] == ["baseline@42"]
    assert [(r["run_key"], r["test_accuracy"]) for r in reports["l2"]] == [
        ("l2@1", 0.81),
        ("l2@2", 0.82),
    ]
    assert "l2.json: ignored" in caplog.text
    assert [r["seed"] for r in load_reports(tmp_path, ["l2"], seeds=[2])["l2"]] == [2]
    with pytest.raises(ReportError, match=r"no seeds \[3\] for variant 'l2'"):
        load_reports(tmp_path, ["l2"], seeds=[1, 3])
    with pytest.raises(
        ReportError, match="no report for variant .dropout.; run its evaluate stage first"
    ):
        load_reports(tmp_path, ["dropout"])


def test_load_reports_refuses_a_name_without_an_integer_seed(tmp_path):
    write_report(tmp_path, "l2@x", make_report("l2", 7, 0.8, 0.6))
    with pytest.raises(ReportError, match="l2@x.json: 'l2@x': expected <variant>@<seed>"):
        load_reports(tmp_path, ["l2"])


def test_load_reports_checks_the_seed_and_the_keys(tmp_path):
    write_report(tmp_path, "l2@7", make_report("l2", 8, 0.8, 0.6))
    with pytest.raises(ReportError, match="holds seed 8, its name says 7"):
        load_reports(tmp_path, ["l2"])
    (tmp_path / "l2@7.json").write_text(json.dumps({"variant": "l2", "seed": 7}))
    with pytest.raises(ReportError, match="missing .'test_accuracy'"):
        load_reports(tmp_path, ["l2"])
    (tmp_path / "l2@7.json").write_text("{")
    with pytest.raises(ReportError, match="not valid JSON"):
        load_reports(tmp_path, ["l2"])


def write_weights(directory, key, kernel, layer="conv_1/kernel"):
    variant, seed = key.split("@")
    record = {"variant": variant, "seed": int(seed), **kernel_record(layer, kernel)}
    (directory / f"{key}.json").write_text(json.dumps(record))


def test_first_layer_kernels_come_back_bit_for_bit_from_the_weights_files(tmp_path):
    rng = np.random.default_rng(3)
    kernels = {
        "baseline": rng.normal(0, 0.2, (3, 3, 1, 4)).astype(np.float32),
        "l2": rng.normal(0, 0.05, (3, 3, 1, 4)).astype(np.float32),
    }
    write_weights(tmp_path, "baseline@1", kernels["baseline"])
    write_weights(tmp_path, "l2@1", kernels["l2"])
    write_weights(tmp_path, "l2@2", np.zeros((3, 3, 1, 4), np.float32))  # not the lowest seed
    reports = {
        "baseline": [{"run_key": "baseline@1"}],
        "l2": [{"run_key": "l2@1"}, {"run_key": "l2@2"}],
    }
    loaded = load_first_layer_kernels(tmp_path, reports)
    assert set(loaded) == {"baseline", "l2"}
    for name, kernel in kernels.items():
        assert loaded[name].dtype == np.float32 and loaded[name].shape == (3, 3, 1, 4)
        assert loaded[name].tobytes() == kernel.tobytes()
    # The histogram figure draws the same numbers from the file as from the model's arrays.
    from_files = rf.weight_histogram_figure(loaded, tmp_path / "a.png")
    from_arrays = rf.weight_histogram_figure(kernels, tmp_path / "b.png")
    assert from_files == from_arrays
    assert sum(from_files["counts"]["l2"]) == 36

    (tmp_path / "l2@1.json").write_text(
        json.dumps({"variant": "l2", "seed": 1, "layer": "k", "shape": [2, 2], "values": [0.0]})
    )
    with pytest.raises(ReportError, match=r"1 values for shape \[2, 2\]; re-run its evaluate"):
        load_first_layer_kernels(tmp_path, reports)
    with pytest.raises(ReportError, match="dropout@1.json: not found; run its evaluate stage"):
        load_first_layer_kernels(tmp_path, {"dropout": [{"run_key": "dropout@1"}]})


def test_load_history_reads_columns(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("epoch,train_data_loss,val_data_loss\n1,0.9,1.0\n2,0.5,0.8\n")
    assert load_history(path) == {
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
    means, stds = mean_curve([[1.0, 2.0, 3.0], [3.0, 4.0]])
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
    assert stale.read_bytes() == b""  # only the comparison's own figures are replaced
    assert sorted(p.name for p in stale.parent.iterdir()) == [
        "first_layer_weights.png",
        "strength_sweep.png",
        "test_metrics.png",
        "unrelated.png",
        "val_data_loss.png",
    ]
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
    # One set of edges over all kernels: 2 * sqrt(72) ~ 16 bins from the lowest to the highest.
    everything = np.concatenate([k.ravel() for k in kernels.values()])
    expected_edges = np.linspace(everything.min(), everything.max(), 17)
    assert histograms["bin_edges"] == pytest.approx(expected_edges.tolist())
    for name, kernel in kernels.items():
        expected = np.histogram(kernel.ravel(), bins=expected_edges)[0].tolist()
        assert histograms["counts"][name] == expected, name
        assert sum(histograms["counts"][name]) == 72
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
    spread = float(board[0]["test_accuracy_high"]) - float(board[0]["test_accuracy"])
    assert spread > 0  # two seeds: mean ± sample std, the error bar
    assert float(board[0]["test_accuracy_low"]) == pytest.approx(0.8415 - spread)

    text = result.markdown
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[1:] == [
        "| 1 | l2 | 2 | 0.8415 ± 0.0007 | +0.0265 | 0.5000 ± 0.0000 | -0.2000 | 0.0500 ± 0.0000 "
        "| 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.050 ± 0.000 | 1,000 | 10.0 ± 0.0 |",
        "| 2 | dropout | 2 | 0.8300 ± 0.0000 | +0.0150 | 0.4500 ± 0.0000 | -0.2500 "
        "| 0.0500 ± 0.0000 | 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.000 ± 0.000 | 1,000 "
        "| 10.0 ± 0.0 |",
        "| 3 | l2_small | 2 | 0.8200 ± 0.0000 | +0.0050 (n.s.) | 0.5500 ± 0.0000 | -0.1500 "
        "| 0.0500 ± 0.0000 | 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.020 ± 0.000 | 1,000 "
        "| 10.0 ± 0.0 |",
        "| 4 | **baseline** | 2 | 0.8150 ± 0.0071 | – | 0.7000 ± 0.0000 | – | 0.0500 ± 0.0000 "
        "| 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.010 ± 0.000 | 1,000 | 10.0 ± 0.0 |",
    ]
    assert comparison_metrics(result) == pytest.approx(
        {
            "test_accuracy/l2": 0.8415,
            "test_data_loss/l2": 0.5,
            "test_accuracy/dropout": 0.83,
            "test_data_loss/dropout": 0.45,
            "test_accuracy/l2_small": 0.82,
            "test_data_loss/l2_small": 0.55,
            "test_accuracy/baseline": 0.815,
            "test_data_loss/baseline": 0.7,
            "best/test_accuracy": 0.8415,
            "best/accuracy_vs_baseline": 0.0265,
        }
    )
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
    assert result.series["test_metrics"]["test_accuracy"] == pytest.approx([0.81, 0.8])
    assert set(result.plot_data) == {"leaderboard.csv"}
    assert "first_layer_weights" not in result.markdown


def test_plot_csvs_keep_a_name_with_a_comma_and_a_quote_in_one_field():
    odd = 'l2, "strong"'
    reports = {
        "baseline": [make_report("baseline", 1, 0.8, 0.6)],
        odd: [make_report(odd, 1, 0.9, 0.5)],
    }
    board = list(csv.reader(io.StringIO(rr.leaderboard_csv(summarize(reports)))))
    assert board == [
        [
            "variant",
            "test_accuracy",
            "test_accuracy_low",
            "test_accuracy_high",
            "test_data_loss",
            "generalization_gap",
            "seeds",
        ],
        [odd, "0.9", "0.9", "0.9", "0.5", "0.05", "1"],
        ["baseline", "0.8", "0.8", "0.8", "0.6", "0.05", "1"],
    ]
    curves = {
        odd: {"epoch": [1, 2], "val_data_loss": [0.7, 0.6], "train_data_loss": [0.5, 0.4]},
        "baseline": {"epoch": [1], "val_data_loss": [0.9]},
    }
    assert list(csv.reader(io.StringIO(rr.learning_curves_csv(curves)))) == [
        ["variant", "epoch", "val_data_loss", "train_data_loss"],
        [odd, "1", "0.7", "0.5"],
        [odd, "2", "0.6", "0.4"],
        ["baseline", "1", "0.9", ""],
    ]


def test_weight_histograms_need_the_baseline(tmp_path):
    with pytest.raises(ReportError, match="baseline"):
        rf.weight_histogram_figure({"l2": np.zeros(4)}, tmp_path / "w.png")


def test_each_variant_has_one_colour_in_every_figure():
    from reglab.report.figures import BASELINE_COLOUR, variant_colours

    by_name = variant_colours(["l2", "baseline", "dropout", "l1"])
    by_rank = variant_colours(["dropout", "l1", "baseline", "l2"])  # the leaderboard's order
    assert by_name == by_rank
    assert by_name["baseline"] == BASELINE_COLOUR
    assert len(set(by_name.values())) == 4
    assert variant_colours(["baseline", "l1"], "baseline")["l1"] != BASELINE_COLOUR
