"""The benchmark: FLOPs from layer shapes, epoch timing, and the tiny mode's numbers."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.benchmark import finite_positive_numbers, summarize_pipelines, summarize_training
from bench.flops import forward_flops_per_sample, training_flops_per_sample
from bench.workloads import build_tutorial_model, summarize_epochs
from tests.conftest import PROJECT_ROOT

FASHION_MIRROR = Path("/usr/share/datasets/fashion-mnist")

DEFAULT_CNN = {
    "image_shape": [28, 28, 1],
    "num_classes": 10,
    "learning_rate": 1e-3,
    "model": {
        "conv_filters": [32, 64],
        "kernel_size": 3,
        "dense_units": [128],
        "activation": "relu",
    },
}


def test_flops_of_the_default_cnn_match_a_hand_count():
    model = build_tutorial_model(DEFAULT_CNN)
    multiply_adds = (
        26 * 26 * 32 * 3 * 3 * 1  # conv_1: 28x28x1 -> 26x26x32
        + 11 * 11 * 64 * 3 * 3 * 32  # conv_2: 13x13x32 -> 11x11x64
        + 5 * 5 * 64 * 128  # dense: flattened 5x5x64 -> 128
        + 128 * 10  # logits
    )
    assert forward_flops_per_sample(model) == 2 * multiply_adds == 5_262_080
    assert training_flops_per_sample(model) == 3 * 2 * multiply_adds


def test_project_model_has_the_same_flops_and_parameters_as_the_tutorial_one():
    from reglab.model.build import ModelConfig, build_model
    from reglab.model.regularizers import RegularizerConfig

    project = build_model(ModelConfig(), RegularizerConfig(), (28, 28, 1), 10, seed=0)
    tutorial = build_tutorial_model(DEFAULT_CNN)
    assert forward_flops_per_sample(project) == forward_flops_per_sample(tutorial)
    assert project.count_params() == tutorial.count_params()


def epoch(total: float, steps: float) -> dict[str, float]:
    return {
        "steps_s": steps,
        "validation_s": 0.1,
        "callbacks_s": 0.01,
        "epoch_end_s": total - steps - 0.1,
        "total_s": total,
    }


def test_epoch_summary_leaves_out_the_warm_up_epoch():
    epochs = [epoch(10.0, 9.0), epoch(2.0, 1.6), epoch(2.5, 2.0), epoch(3.0, 2.4)]
    summary = summarize_epochs(epochs, train_samples=1000)
    assert summary["epoch_samples_per_s"] == pytest.approx(1000 / 2.5)
    assert summary["step_samples_per_s"] == pytest.approx(1000 / 2.0)
    assert summary["first_epoch_samples_per_s"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="at least 2"):
        summarize_epochs(epochs[:1], train_samples=1000)


def run_result(epoch_rate: float, step_rate: float, **extra: float) -> dict[str, float]:
    return {
        "epoch_samples_per_s": epoch_rate,
        "step_samples_per_s": step_rate,
        "first_epoch_samples_per_s": 100.0,
        "epoch_s": 1.0,
        "steps_s": 0.8,
        "validation_s": 0.1,
        "epoch_end_s": 0.1,
        "callbacks_s": 0.05,
        "peak_rss_mib": 900.0,
        "process_s": 30.0,
        "forward_flops_per_sample": 1000,
        "params": 10,
        **extra,
    }


def test_ratio_is_project_over_bare_of_the_medians():
    bare = [run_result(1000, 1200), run_result(1100, 1300), run_result(900, 1100)]
    project = [
        run_result(rate, rate + 100, train_variant_s=40.0, outside_epochs_s=5.0)
        for rate in (950, 1000, 990)
    ]
    training = summarize_training(bare, project, {"matmul_flops_per_s": 1e9})
    assert training["ratio"] == pytest.approx(990 / 1000)
    assert training["paired_ratios"] == pytest.approx([0.95, 1000 / 1100, 990 / 900])
    assert training["meets_target"] is True
    assert training["flops"]["bare_training_flops_per_s"] == pytest.approx(3000 * 1200)
    assert training["model"]["same_model"] is True


def test_pipeline_summary_compares_with_the_synthetic_ceiling():
    rows = [
        {"batch_size": 32, "pipeline": "arrays", "samples_per_s": 800.0},
        {"batch_size": 32, "pipeline": "synthetic", "samples_per_s": 1000.0},
        {"batch_size": 128, "pipeline": "arrays", "samples_per_s": 1500.0},
        {"batch_size": 128, "pipeline": "tf_data", "samples_per_s": 1400.0},
        {"batch_size": 128, "pipeline": "synthetic", "samples_per_s": 2000.0},
    ]
    summary = summarize_pipelines(rows)
    assert summary["fastest"] == {"batch_size": 128, "pipeline": "arrays"}
    assert summary["by_batch_size"][0]["arrays_of_synthetic"] == pytest.approx(0.8)
    assert summary["by_batch_size"][1]["tf_data_of_synthetic"] == pytest.approx(0.7)


def test_finite_positive_numbers_names_what_is_wrong():
    assert finite_positive_numbers({"a": 1, "b": [2.0, True], "c": None}) == []
    assert finite_positive_numbers({"a": {"b": float("nan")}, "c": [0]}) == ["a.b=nan", "c[0]=0"]


@pytest.mark.slow
def test_tiny_benchmark_produces_every_number(tmp_path: Path):
    if not FASHION_MIRROR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make dataset)")
    output = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    completed = subprocess.run(
        [sys.executable, "-m", "bench.benchmark", "--tiny", "--output", str(output)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    training = report["training"]

    for section in ("training", "input_pipeline", "hardware"):
        problems = finite_positive_numbers(report[section])
        if section == "training":
            # The project measures the validation set in its epoch-end loss
            # decomposition, not in a Keras validation pass: that phase is empty.
            problems = [p for p in problems if not re.fullmatch(r"project\..*validation_s=0\.0", p)]
            assert training["project"]["validation_s"] == 0.0
            assert training["project"]["epoch_end_s"] > 0
        assert problems == [], section
    for side in ("bare", "project"):
        assert set(training[side]) >= {"epoch_samples_per_s", "step_samples_per_s", "peak_rss_mib"}
        for run in report["runs"][side]:
            assert len(run["epochs"]) == 2  # the tiny mode's two epochs, both timed
    assert training["ratio"] == pytest.approx(
        training["project"]["epoch_samples_per_s"] / training["bare"]["epoch_samples_per_s"]
    )
    assert training["model"]["same_model"] is True
    assert training["model"]["forward_flops_per_sample"] == 5_262_080
    assert math.isclose(
        training["flops"]["bare_training_flops_per_s"],
        3 * 5_262_080 * training["bare"]["step_samples_per_s"],
    )
    batch_sizes = [entry["batch_size"] for entry in report["input_pipeline"]["by_batch_size"]]
    assert batch_sizes == [32]
    for entry in report["input_pipeline"]["by_batch_size"]:
        assert {"arrays", "tf_data", "epoch_batches", "synthetic"} <= set(entry)
    assert report["repro"] is None  # the tiny mode leaves the pipeline out
    assert "ratio project/bare" in completed.stdout


def test_epoch_timer_splits_steps_validation_and_epoch_end_work():
    import time

    import keras
    import numpy as np

    from bench.workloads import instrument_fit

    class Slow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(0.3)

    record: dict = {}
    timer = instrument_fit(record)
    try:
        x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32")
        y = (x[:, 0] > 0).astype("float32")
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[Slow()])
        no_validation = list(timer.epochs)
        timer.reset()
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, validation_data=(x, y))
        with_validation = list(timer.epochs)
    finally:
        keras.Model.fit = keras.Model.fit.__wrapped__
    for epoch in no_validation:
        assert epoch["validation_s"] == 0.0
        assert 0.3 <= epoch["callbacks_s"] <= epoch["epoch_end_s"] < 1.0
        assert epoch["steps_s"] < epoch["total_s"] - 0.3
    assert all(epoch["validation_s"] > 0 for epoch in with_validation)
    assert record["fit_calls"] == 2


def test_pruner_replay_decides_with_rays_asha_and_optunas_pruner():
    """bench/pruner_replay.py on four-epoch curves: Ray's ASHA bracket (reduction
    factor 2, rungs at 1, 2 and 4 epochs) and Optuna's MedianPruner stop the trial
    that is worse than the first at epoch 1 and keep the better one; a trial the
    search stopped is continued by the nearest grid curve, shifted."""
    from bench.pruner_replay import Curve, extend, optuna_pruner, ray_asha, replay

    grid = [Curve(1e-5, [0.7, 0.66, 0.65, 0.64]), Curve(1e-1, [1.1, 1.0, 0.9, 0.8])]
    assert extend(Curve(5e-2, [1.0, 0.9]), grid, 4) == pytest.approx([1.0, 0.9, 0.8, 0.7])
    trials = [
        Curve(1e-4, [1.0, 0.9, 0.8, 0.7]),
        Curve(1e-1, [1.1]),  # stopped at its first epoch by the real search
        Curve(1e-4, [0.95, 0.85, 0.75, 0.65]),
    ]
    asha = replay(ray_asha(1, 2, 4), trials, grid, 4)
    # 4 + 1 + 4 epochs; the grid's best 0.64 within 5 % (0.672) first at the 9th.
    assert (asha.epochs, asha.best, asha.to_reach, asha.extrapolated) == (9, 0.65, 9, False)
    import optuna

    median = replay(
        optuna_pruner(lambda: optuna.pruners.MedianPruner(n_startup_trials=1)), trials, grid, 4
    )
    assert (median.epochs, median.best, median.to_reach) == (9, 0.65, 9)
    # A rule that never stops trains the stopped trial on: 12 epochs, extrapolated.
    never = replay(optuna_pruner(optuna.pruners.NopPruner), trials, grid, 4)
    assert (never.epochs, never.extrapolated) == (12, True)
