"""Logs a user can read: one line per epoch (a bar on a terminal), no library noise.

The stage tests run the real train stage (training, then evaluation) on digits, with the
environment a user has (no TF_CPP_MIN_LOG_LEVEL, no REGLAB_LOG_LEVEL), and read
the captured output line by line.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reglab.train.progress import EpochProgress, epoch_line
from tests.conftest import make_project, served_inputs

ROW = {"train_data_loss": 0.41234, "val_data_loss": 0.50119, "train_penalty": 0.03121,
       "val_accuracy": 0.815}  # fmt: skip

# The lines TensorFlow's C++ libraries print while they load, before any setting is
# read: nothing switches them off, so they may show (twice: two libraries load). On a
# CPU with oneDNN's kernels (AVX-512 here) the loader also says they are on; only
# TF_ENABLE_ONEDNN_OPTS=0 would silence it, and that changes the numbers.
LOADER_LINES = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} \d\d:\d\d:[\d.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|I\d{4} \d\d:\d\d:[\d.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on)"
)

# What a stage's log must not hold besides those: TensorFlow's C++ runtime, Keras's
# progress bars, MLflow's info lines and download bars, ANSI colour codes.
NOISE = [
    re.compile(pattern)
    for pattern in (
        r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]",
        r"cuInit",
        r"use_unbounded_threadpool",
        r"oneDNN",
        r"\x1b\[",
        r"━|ms/step|Downloading artifacts",
        r" INFO mlflow",
        r"Warning:",
    )
]


def user_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "REGLAB_LOG_LEVEL")
    }
    return {**env, **extra}


def test_epoch_line_holds_the_numbers():
    line = epoch_line("l2@42", 3, 20, ROW, 1.44)
    assert line == (
        "l2@42 epoch 3/20: train data loss 0.4123, val data loss 0.5012, penalty 0.03121, "
        "val accuracy 0.8150, 1.44 s"
    )


def test_a_log_gets_one_line_per_epoch(caplog):
    hook = EpochProgress("l1@7", 2, stream=io.StringIO())
    with caplog.at_level(logging.INFO, logger="reglab.train.progress"):
        hook(1, ROW)
        hook(2, ROW)
    lines = [record.getMessage() for record in caplog.records]
    assert [line.split(":")[0] for line in lines] == ["l1@7 epoch 1/2", "l1@7 epoch 2/2"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_instead(caplog):
    screen = Terminal()
    hook = EpochProgress("l1@7", 4, start_epoch=1, stream=screen)
    with caplog.at_level(logging.INFO, logger="reglab.train.progress"):
        for epoch in (2, 3, 4):
            hook(epoch, ROW)
    assert not caplog.records
    shown = screen.getvalue()
    assert "l1@7" in shown and "4/4" in shown and "val=0.5012" in shown
    assert hook.bar is None  # closed after the last epoch


def import_tensorflow(**env: str) -> str:
    code = "import reglab.stages, tensorflow"
    return subprocess.run(
        [sys.executable, "-c", code], env=user_env(**env), capture_output=True, text=True,
        check=True, timeout=300,
    ).stderr  # fmt: skip


@pytest.mark.slow
def test_tensorflow_loads_quietly_unless_debug():
    quiet = [line for line in import_tensorflow().splitlines() if line.strip()]
    assert quiet and all(LOADER_LINES.match(line) for line in quiet), quiet
    debug = import_tensorflow(REGLAB_LOG_LEVEL="DEBUG")
    assert "cpu_feature_guard" in debug  # TensorFlow's own info lines, kept out by default


def run_stage(root: Path, stage: str, key: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", f"reglab.stages.{stage}", key],
        cwd=root, env=user_env(MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, list[str]]:
    """The digits project after the real train stage of l2@42 (training, then evaluation),
    with its log."""
    root = make_project(tmp_path_factory.mktemp("logs"), ["tracking.log_model=true"])
    return root, run_stage(root, "train", "l2@42")


@pytest.mark.slow
def test_stage_logs_hold_the_projects_lines_only(trained):
    _, train_log = trained
    assert any("test accuracy" in line for line in train_log)  # the evaluation's line
    for line in train_log:
        if LOADER_LINES.match(line):
            continue
        assert not any(pattern.search(line) for pattern in NOISE), line
        assert re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) reglab\.", line), line


@pytest.mark.slow
def test_one_epoch_line_per_epoch_with_the_history_numbers(trained):
    root, train_log = trained
    history = list(csv.DictReader((root / "reports/history/l2@42.csv").open()))
    lines = [line.split(": ", 1)[1] for line in train_log if " epoch " in line]
    assert len(lines) == len(history) == 3
    for line, row in zip(lines, history, strict=True):
        values = {key: float(value) for key, value in row.items()}
        expected = epoch_line("l2@42", int(values["epoch"]), 3, values, 0.0)
        assert line.rsplit(", ", 1)[0] == expected.rsplit(", ", 1)[0]
        assert float(line.rsplit(", ", 1)[1].removesuffix(" s")) > 0


@pytest.mark.slow
def test_the_logged_model_predicts_evaluates_labels_as_probabilities(trained):
    """Through MLflow: probabilities (rows sum to 1) with the class names as columns,
    whose arg-max is the predicted label evaluate wrote for each test image."""
    import mlflow

    from reglab.config.compose import load_params

    root, _ = trained
    run_id = json.loads((root / ".reglab/runs/l2@42.json").read_text())["mlflow_run_id"]
    class_names = load_params(root / "params.yaml", check_fresh=False).data.class_names
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    cwd = os.getcwd()
    os.chdir(root)  # the sqlite store's artifacts live in ./mlruns
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    finally:
        os.chdir(cwd)
    images = served_inputs(root / "data/processed")[:]
    probabilities = model.predict(images)
    assert list(probabilities.columns) == class_names
    assert model.metadata.signature.outputs.input_names() == class_names
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert (probabilities.to_numpy() >= 0).all()
    confusion = list(csv.DictReader((root / "reports/plots/confusion/l2@42.csv").open()))
    evaluated = [row["predicted"] for row in confusion]
    assert len(evaluated) == len(images)
    assert list(probabilities.idxmax(axis=1)) == evaluated


@pytest.mark.slow
def test_the_stage_process_ends_with_everything_it_logged_in_the_store(trained):
    """The stage process skips the interpreter's teardown (reglab.stages): only after
    MLflow's exit callbacks have drained its queues. Every epoch's metrics and every
    kernel-histogram image (logged in the background) are in the store."""
    from mlflow import MlflowClient

    root, _ = trained
    run_id = json.loads((root / ".reglab/runs/l2@42.json").read_text())["mlflow_run_id"]
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    history = list(csv.DictReader((root / "reports/history/l2@42.csv").open()))
    logged = client.get_metric_history(run_id, "val/data_loss")
    assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
        (int(row["epoch"]), pytest.approx(float(row["val_data_loss"]))) for row in history
    ]
    cwd = os.getcwd()
    os.chdir(root)  # the sqlite store's artifacts live in ./mlruns
    try:
        images = [artifact.path for artifact in client.list_artifacts(run_id, "images")]
    finally:
        os.chdir(cwd)
    steps = {int(path.split("+step+")[1].split("+")[0]) for path in images if path.endswith(".png")}
    assert steps == {0, len(history)}  # before training and after: histogram_every is 5
    assert client.get_run(run_id).data.metrics["test/accuracy"] > 0.1


def test_a_stage_process_keeps_its_exit_code(tmp_path):
    """A refused input: exit code 2 and its one line, through the same exit as a done
    stage (whose code 0 the `trained` fixture checks)."""
    refused = subprocess.run(
        [sys.executable, "-m", "reglab.stages.train"], cwd=tmp_path, env=user_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr == "error: usage: python -m reglab.stages.train <variant>@<seed>\n"
