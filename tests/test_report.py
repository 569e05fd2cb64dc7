"""The comparison on synthetic eval reports: order, the paired tests, figures and their data."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from reglab.model.weights import kernel_record
from reglab.report import (
    ReportError,
    compare,
    compare_to_baseline,
    comparison_metrics,
    comparison_tags,
    holm,
    load_first_layer_kernels,
    load_history,
    load_reports,
    seeds_for_power,
    strength_sweeps,
    summarize,
)
from reglab.report import figures as rf
from reglab.report import render as rr
from reglab.report.stats import mean_curve, paired_power


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
    """Seeds 1-3. Accuracy differences from the baseline, seed by seed: wide 0, +0.01, +0.02
    (mean +0.01, sd 0.01); clear +0.05, +0.06, +0.04 (mean +0.05, sd 0.01). Data loss: wide
    -0.01, +0.01, -0.03 (mean -0.01, sd 0.02); clear -0.20, -0.20, -0.23."""
    table = {
        "baseline": ([0.80, 0.81, 0.82], [0.60, 0.62, 0.64]),
        "wide": ([0.80, 0.82, 0.84], [0.59, 0.63, 0.61]),
        "clear": ([0.85, 0.87, 0.86], [0.40, 0.42, 0.41]),
    }
    return {
        variant: [
            make_report(variant, seed, acc_value, loss_value)
            for seed, acc_value, loss_value in zip((1, 2, 3), acc, loss, strict=True)
        ]
        for variant, (acc, loss) in table.items()
    }


# Student's t with 2 degrees of freedom (three paired seeds) has a closed form, so the
# tests below compute p-values and quantiles from the formulas, not through scipy:
#   CDF F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided p = 1 - |t| / sqrt(2 + t^2),
#   quantile t_q = (2q - 1) sqrt(2 / (4 q (1 - q))).
def p_two_sided_df2(t):
    return 1 - abs(t) / math.sqrt(2 + t * t)


def t_quantile_df2(q):
    return (2 * q - 1) * math.sqrt(2 / (4 * q * (1 - q)))


def test_the_closed_forms_for_two_degrees_of_freedom():
    assert t_quantile_df2(0.975) == pytest.approx(4.302653, abs=1e-6)  # the printed tables
    assert p_two_sided_df2(t_quantile_df2(0.975)) == pytest.approx(0.05)


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


def test_paired_tests_with_holm_over_several_seeds():
    rows = {row.variant: row for row in summarize(multi_seed_reports())}
    assert rows["baseline"].test_accuracy.mean == pytest.approx(0.81)
    assert rows["baseline"].test_accuracy.std == pytest.approx(0.01)
    wide = rows["wide"].accuracy_vs_baseline
    clear = rows["clear"].accuracy_vs_baseline
    assert (wide.test, wide.n, clear.test, clear.n) == ("paired", 3, "paired", 3)
    # t = mean / (sd / sqrt(n)): wide 0.01 / (0.01 / sqrt 3) = sqrt 3, clear 5 sqrt 3.
    assert wide.difference == pytest.approx(0.01) and wide.difference_std == pytest.approx(0.01)
    assert wide.statistic == pytest.approx(math.sqrt(3))
    assert clear.statistic == pytest.approx(5 * math.sqrt(3))
    p_wide, p_clear = p_two_sided_df2(math.sqrt(3)), p_two_sided_df2(5 * math.sqrt(3))
    assert (p_wide, p_clear) == pytest.approx((0.225403, 0.013072), abs=1e-6)
    assert wide.p_value == pytest.approx(p_wide) and clear.p_value == pytest.approx(p_clear)
    # Holm over the two: the smaller p times 2, the larger times 1 (and never below it).
    assert clear.p_holm == pytest.approx(2 * p_clear)
    assert wide.p_holm == pytest.approx(p_wide)
    assert clear.significant is True and wide.significant is False
    # 95 % CI: mean ± t(0.975, 2) sd / sqrt 3.
    half = t_quantile_df2(0.975) * 0.01 / math.sqrt(3)
    assert (wide.ci_low, wide.ci_high) == pytest.approx((0.01 - half, 0.01 + half))
    assert (clear.ci_low, clear.ci_high) == pytest.approx((0.05 - half, 0.05 + half))
    assert rows["clear"].data_loss_vs_baseline.significant is True
    assert rows["wide"].data_loss_vs_baseline.significant is False
    assert rows["baseline"].accuracy_vs_baseline is None


def test_pairing_tells_a_difference_the_unpaired_comparison_cannot():
    """The seeds move the test data loss by ±0.1, the variant lowers it by about 0.02 on
    every seed: paired, clearly significant; unpaired, lost in the seed-to-seed spread."""
    baseline = {1: 0.60, 2: 0.70, 3: 0.80}
    variant = {1: 0.580, 2: 0.682, 3: 0.778}
    reports = {
        "baseline": [make_report("baseline", s, 0.8, loss) for s, loss in baseline.items()],
        "l2": [make_report("l2", s, 0.8, loss) for s, loss in variant.items()],
    }
    delta = summarize(reports)[0].data_loss_vs_baseline
    # By hand: the differences are -0.020, -0.018, -0.022: mean -0.02, sd 0.002.
    mean, sd, n = -0.02, 0.002, 3
    t = mean / (sd / math.sqrt(n))
    assert t == pytest.approx(-17.3205, abs=1e-4)
    assert delta.test == "paired" and delta.n == 3
    assert delta.difference == pytest.approx(mean)
    assert delta.difference_std == pytest.approx(sd)
    assert delta.statistic == pytest.approx(t)
    assert delta.p_value == pytest.approx(p_two_sided_df2(t))
    assert delta.p_value == pytest.approx(0.0033168, abs=1e-7)
    half = t_quantile_df2(0.975) * sd / math.sqrt(n)
    assert (delta.ci_low, delta.ci_high) == pytest.approx((mean - half, mean + half))
    assert delta.ci_high < 0
    assert delta.p_holm == pytest.approx(delta.p_value)  # one comparison: nothing to adjust
    assert delta.significant is True

    # The same numbers under seeds the baseline was not trained under: Welch's test.
    unpaired = compare_to_baseline({4: 0.580, 5: 0.682, 6: 0.778}, baseline)
    variance_v = ((0.580 - 0.68) ** 2 + (0.682 - 0.68) ** 2 + (0.778 - 0.68) ** 2) / 2
    variance_b = (0.1**2 + 0 + 0.1**2) / 2
    welch_t = -0.02 / math.sqrt(variance_v / 3 + variance_b / 3)
    assert welch_t == pytest.approx(-0.2462, abs=1e-4)
    assert unpaired.test == "welch" and unpaired.statistic == pytest.approx(welch_t)
    # |t| < 0.25: two-sided p between the normal's 0.806 and the Cauchy's (1 df) 0.846.
    assert 0.80 < unpaired.p_value < 0.85
    assert unpaired.ci_low < 0 < unpaired.ci_high
    assert unpaired.difference_std is None and unpaired.seeds_needed is None


def test_mostly_shared_seeds_are_paired_on_the_shared_ones_only():
    baseline = {1: 0.60, 2: 0.70, 3: 0.80}
    # Seed 4 has no partner and is left out: the same test as over seeds 1-3.
    four = compare_to_baseline({1: 0.580, 2: 0.682, 3: 0.778, 4: 0.1}, baseline)
    three = compare_to_baseline({1: 0.580, 2: 0.682, 3: 0.778}, baseline)
    assert four.test == "paired" and four.n == 3
    assert four.p_value == pytest.approx(three.p_value)
    # Two shared seeds of five: too few to pair, Welch over all of them.
    few = compare_to_baseline({1: 0.58, 2: 0.68, 7: 0.7, 8: 0.6, 9: 0.9}, baseline)
    assert few.test == "welch" and few.n == 5


def test_holm_step_down_on_known_p_values():
    # Sorted 0.01, 0.03, 0.04 times 3, 2, 1: 0.03, 0.06, 0.04 -> made non-decreasing: 0.06.
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])
    assert holm([]) == []


def test_one_seed_gives_numbers_and_no_verdict():
    one = compare_to_baseline({1: 0.9}, {1: 0.5, 2: 0.6})
    assert one.difference == pytest.approx(0.35)
    assert (one.test, one.p_value, one.ci_low, one.significant) == (None, None, None, None)
    assert compare_to_baseline({1: 0.5, 2: 0.6}, {1: 0.9}).significant is None
    reports = {
        "baseline": [make_report("baseline", 1, 0.80, 0.6)],
        "l2": [make_report("l2", 1, 0.81, 0.5)],
    }
    row = summarize(reports)[0]
    assert row.data_loss_vs_baseline.difference == pytest.approx(-0.1)
    assert row.data_loss_vs_baseline.significant is None
    assert row.data_loss_vs_baseline.p_holm is None
    text = rr.differences_markdown(summarize(reports))
    assert "| l2 | – | 1 | -0.1000 | – | – | – | no verdict | – |" in text
    assert "One seed (or no paired seeds): no estimate." in text


def test_seeds_that_all_move_by_the_same_amount_have_no_noise_to_test_against():
    same = compare_to_baseline({1: 0.5, 2: 0.6}, {1: 0.7, 2: 0.8})
    assert same.difference == pytest.approx(-0.2)
    assert (same.p_value, same.ci_low, same.ci_high) == pytest.approx((0.0, -0.2, -0.2))
    none = compare_to_baseline({1: 0.7, 2: 0.8}, {1: 0.7, 2: 0.8})
    assert none.p_value == 1.0 and none.seeds_needed is None


def test_seeds_needed_for_80_percent_power():
    # A two-sided paired t-test at alpha 0.05 and 80 % power needs 34 pairs for a
    # standardized difference (mean / sd of the differences) of 0.5, 15 for 0.8 and
    # 10 for 1.0 (Cohen's tables; G*Power gives the same).
    assert seeds_for_power(0.5, 1.0) == 34
    assert seeds_for_power(-0.008, 0.01) == 15
    assert seeds_for_power(0.02, 0.02) == 10
    assert paired_power(10, 1.0) == pytest.approx(0.803, abs=1e-3)
    assert paired_power(9, 1.0) < 0.8
    assert seeds_for_power(0.0, 0.01) is None
    assert seeds_for_power(1e-6, 1.0) is None  # beyond 1,000 seeds
    # From the reports: wide's accuracy moved +0.01 with sd 0.01 over 3 seeds: 10 needed.
    rows = summarize(multi_seed_reports())
    wide = next(row for row in rows if row.variant == "wide")
    assert wide.accuracy_vs_baseline.seeds_needed == 10
    text = rr.differences_markdown(rows)
    assert "| wide | paired | 3 | +0.0100 |" in text and "| n.s. | 10 |" in text
    assert (
        "more seeds than were run needed to tell the observed difference: wide (34 seeds for "
        "its test data loss difference of -0.0100, 10 seeds for its test accuracy difference "
        "of +0.0100; 3 run)." in text
    )


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
        "2 of 2 regularized variants have a lower test data loss than the baseline "
        "(1 of them significantly)" in loss_text
    )
    assert "- wide: 0.6100 ± 0.0200 (lower, -0.0100, -1.6%; not significant, Holm" in loss_text


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

    # The figure: each variant's difference from the baseline with its 95 % CI over seeds.
    bars = result.series["test_metrics"]
    assert bars["variant"] == ["l2", "dropout", "l2_small"]
    assert bars["baseline"] == "baseline"
    assert bars["test_data_loss_difference"] == pytest.approx([-0.2, -0.25, -0.15])
    # Every seed lowered the data loss by the same amount: no spread, a zero-width interval.
    expected = [-0.2, -0.25, -0.15]
    assert np.asarray(bars["test_data_loss_ci"]) == pytest.approx(
        np.repeat(expected, 2).reshape(3, 2)
    )
    assert bars["test_data_loss_significant"] == [True, True, True]
    # l2's accuracy differences over seeds 1, 2: +0.031, +0.022; the interval is
    # mean ± t(0.975, 1) sd / sqrt 2, t with 1 df being Cauchy: t_q = tan(pi (q - 1/2)).
    differences = [0.031, 0.022]
    mean, sd = np.mean(differences), np.std(differences, ddof=1)
    half = math.tan(math.pi * (0.975 - 0.5)) * sd / math.sqrt(2)
    assert half == pytest.approx(0.057178, abs=1e-6)
    assert bars["test_accuracy_difference"][0] == pytest.approx(mean)
    assert bars["test_accuracy_ci"][0] == pytest.approx([mean - half, mean + half])
    # Two-sided p of t with 1 df: 1 - (2 / pi) atan |t|; Holm over the three variants
    # (l2 the smallest p, times 3): none significant.
    t = mean / (sd / math.sqrt(2))
    l2 = result.summaries[0].accuracy_vs_baseline
    assert l2.p_value == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)))
    assert l2.p_holm == pytest.approx(3 * l2.p_value)
    assert bars["test_accuracy_significant"] == [False, False, False]

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
    assert table[1:5] == [  # the leaderboard; the differences tables follow
        "| 1 | l2 | 2 | 0.8415 ± 0.0007 | +0.0265 (n.s.) | 0.5000 ± 0.0000 | -0.2000 "
        "| 0.0500 ± 0.0000 | 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.050 ± 0.000 | 1,000 "
        "| 10.0 ± 0.0 |",
        "| 2 | dropout | 2 | 0.8300 ± 0.0000 | +0.0150 (n.s.) | 0.4500 ± 0.0000 | -0.2500 "
        "| 0.0500 ± 0.0000 | 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.000 ± 0.000 | 1,000 "
        "| 10.0 ± 0.0 |",
        "| 3 | l2_small | 2 | 0.8200 ± 0.0000 | +0.0050 (n.s.) | 0.5500 ± 0.0000 | -0.1500 "
        "| 0.0500 ± 0.0000 | 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.020 ± 0.000 | 1,000 "
        "| 10.0 ± 0.0 |",
        "| 4 | **baseline** | 2 | 0.8150 ± 0.0071 | – | 0.7000 ± 0.0000 | – | 0.0500 ± 0.0000 "
        "| 0.1000 ± 0.0000 | 0.0200 ± 0.0000 | 0.010 ± 0.000 | 1,000 | 10.0 ± 0.0 |",
    ]
    metrics = comparison_metrics(result)
    old_metrics = {
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
    assert {key: metrics[key] for key in old_metrics} == pytest.approx(old_metrics)
    assert metrics["test_accuracy_vs_baseline/l2"] == pytest.approx(mean)
    assert metrics["test_accuracy_vs_baseline_ci_low/l2"] == pytest.approx(mean - half)
    assert metrics["test_accuracy_vs_baseline_ci_high/l2"] == pytest.approx(mean + half)
    assert metrics["test_accuracy_vs_baseline_p_holm/l2"] == pytest.approx(l2.p_holm)
    assert metrics["test_accuracy_vs_baseline_significant/l2"] == 0.0
    assert metrics["test_data_loss_vs_baseline_significant/dropout"] == 1.0
    assert metrics["best/accuracy_vs_baseline_significant"] == 0.0
    assert not any(key.endswith("/baseline") and "_vs_" in key for key in metrics)
    assert comparison_tags(result) == {
        "significant/test_accuracy": "none",
        "significant/test_data_loss": "dropout,l2,l2_small",
    }
    assert "Best: **l2**" in text
    assert "](figures/val_data_loss.png)" in text
    assert "- kernel.l2: l2_small, l2" in text
    assert result.series["strength_sweep"]["kernel.l2"]["parameters"] == ["kernel.l2"]
    assert "significant when its Holm-adjusted p-value is below 0.05" in text
    assert "## Differences from the baseline" in text
    assert "| l2 | paired | 2 | +0.0265 |" in text


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
    bars = result.series["test_metrics"]  # one seed: the difference, no interval, no verdict
    assert bars["variant"] == ["l2"]
    assert bars["test_accuracy_difference"] == pytest.approx([0.01])
    assert bars["test_accuracy_ci"] == [None] and bars["test_accuracy_significant"] == [None]
    assert comparison_tags(result) == {
        "significant/test_accuracy": "no verdict",
        "significant/test_data_loss": "no verdict",
    }
    assert "best/accuracy_vs_baseline_significant" not in comparison_metrics(result)
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
