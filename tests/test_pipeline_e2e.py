"""End to end: the real `dvc repro` and `dvc exp run` on a tiny copy of the project.

One copy, several checks in sequence (each `dvc` call costs TensorFlow start-ups):
a first repro from nothing, what MLflow and the reports hold, a second repro that
re-runs nothing, and an experiment that changes one variant and re-runs only it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT, served_inputs
from tests.project_copy import clean_environment, copy_project

pytestmark = pytest.mark.slow

FASHION_MIRROR = Path("/usr/share/datasets/fashion-mnist")
VARIANTS = {"baseline": "none", "l2": "l2"}
EPOCH_METRICS = (
    "train/data_loss",
    "train/penalty",
    "train/total_loss",
    "train/accuracy",
    "val/data_loss",
    "val/accuracy",
)


def run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    if not FASHION_MIRROR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make dataset)")
    root = tmp_path_factory.mktemp("project")
    # A tiny, two-variant configuration, made the way a user would: in conf/.
    conf = PROJECT_ROOT / "conf"
    extra = {
        "conf/variants/e2e.yaml": "# @package variants\ndefaults:\n"
        + "".join(
            f"  - /regularizer@{name}: [none, {recipe}]\n" for name, recipe in VARIANTS.items()
        ),
        "conf/experiment/e2e.yaml": "# @package _global_\ndefaults:\n  - tiny\n"
        "  - override /variants: e2e\ntracking:\n  log_model: true\n",
        "conf/config.yaml": (conf / "config.yaml")
        .read_text()
        .replace("  - experiment: null", "  - experiment: e2e"),
    }
    copy_project(root, files=extra)
    env = clean_environment()
    first = run(["dvc", "repro"], root, env)
    return root, env, first


def stages_run(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def run_id(root: Path, key: str) -> str:
    """The MLflow run of a trained model, from its record outside DVC's outputs."""
    return json.loads((root / ".reglab/runs" / f"{key}.json").read_text())["mlflow_run_id"]


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_first_repro_runs_every_stage(project):
    root, _, first = project
    assert stages_run(first.stdout) == {
        "check",
        "download",
        "preprocess",
        "train@baseline-42",
        "train@l2-42",
        "compare",
    }
    manifest = json.loads((root / "data/processed/manifest.json").read_text())
    assert manifest["sizes"] == {"train": 400, "val": 200, "test": 300}
    test_y = np.load(root / "data/processed/test_y.npy")
    assert test_y.shape == (300,) and set(np.unique(test_y)) == set(range(10))


def test_mlflow_holds_one_run_per_variant_with_decomposed_losses(project):
    root, _, _ = project
    mlflow_client = client(root)
    experiment = mlflow_client.get_experiment_by_name("reglab")
    runs = {r.info.run_name: r for r in mlflow_client.search_runs([experiment.experiment_id])}
    assert {f"{name}@42" for name in VARIANTS} <= set(runs)
    for name in VARIANTS:
        run_info = runs[f"{name}@42"]
        assert run_info.info.status == "FINISHED"
        assert run_info.data.tags["variant"] == name
        assert run_info.data.params["variant"] == name
        assert run_info.data.params["train.epochs"] == "1"
        for key in EPOCH_METRICS:
            history = mlflow_client.get_metric_history(run_info.info.run_id, key)
            assert [m.step for m in history] == [1], key
            assert math.isfinite(history[0].value), key
        metrics = run_info.data.metrics
        assert metrics["train/total_loss"] == pytest.approx(
            metrics["train/data_loss"] + metrics["train/penalty"], rel=1e-6
        )
        assert 0 <= metrics["test/accuracy"] <= 1
        artifacts = {a.path for a in mlflow_client.list_artifacts(run_info.info.run_id)}
        assert {"config.json", "model_summary.txt", "weights"} <= artifacts
        weights = {a.path for a in mlflow_client.list_artifacts(run_info.info.run_id, "weights")}
        assert "weights/histograms_final.png" in weights
    assert runs["baseline@42"].data.metrics["train/penalty"] == 0.0
    assert runs["l2@42"].data.metrics["train/penalty"] > 0.0
    summary = mlflow_client.download_artifacts(runs["l2@42"].info.run_id, "model_summary.txt")
    assert "L2" in Path(summary).read_text()


def test_logged_model_predicts_on_test_images(project):
    import mlflow

    root, _, _ = project
    report = json.loads((root / "reports/eval/l2@42.json").read_text())
    assert "mlflow_run_id" not in report  # a DVC output; the run is in .reglab/runs
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    cwd = os.getcwd()
    os.chdir(root)  # the sqlite store's artifacts live in ./mlruns
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{run_id(root, 'l2@42')}/model")
    finally:
        os.chdir(cwd)
    x_test = served_inputs(root / "data/processed")[:16]
    predictions = np.asarray(model.predict(x_test))
    assert predictions.shape == (16, 10)
    assert np.all(np.isfinite(predictions))


def test_reports_hold_the_evaluation(project):
    root, _, _ = project
    mlflow_client = client(root)
    accuracies = {}
    for name in VARIANTS:
        report = json.loads((root / f"reports/eval/{name}@42.json").read_text())
        assert 0.2 < report["test_accuracy"] <= 1.0  # ten classes: chance is 0.1
        assert report["test_data_loss"] > 0
        assert report["generalization_gap"] == pytest.approx(
            report["train_accuracy"] - report["test_accuracy"]
        )
        run_info = mlflow_client.get_run(run_id(root, f"{name}@42"))
        assert run_info.info.run_name == f"{name}@42"
        assert run_info.data.metrics["test/accuracy"] == pytest.approx(report["test_accuracy"])
        accuracies[name] = report["test_accuracy"]
    summary = (root / "reports/summary.md").read_text()
    rows = [
        line.split("|")
        for line in summary.splitlines()
        if line.startswith("| 1 ") or line.startswith("| 2 ")
    ]
    ranked = [row[2].strip().strip("*") for row in rows]
    assert ranked == sorted(accuracies, key=accuracies.get, reverse=True), summary
    assert float(rows[0][4]) == pytest.approx(max(accuracies.values()), abs=5e-5)


def test_second_repro_reruns_nothing(project):
    root, env, _ = project
    again = run(["dvc", "repro"], root, env)
    assert stages_run(again.stdout) == set()


def test_a_rejected_override_stops_before_any_output_is_deleted(project):
    """The rejected -S, the way back the error gives (`make params`, i.e. `reglab
    compose --output params.yaml`), then a `dvc repro` that succeeds with nothing to do."""
    root, env, _ = project
    kept = {
        path: path.read_bytes()
        for path in (
            root / "models/baseline@42/model.keras",
            root / "reports/history/baseline@42.csv",
            root / "reports/eval/baseline@42.json",
        )
    }
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", "train.epochs=-1"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "error: params.yaml: train.epochs=-1: must be >= 1" in output, output
    assert "run `make params` to compose it again from conf/" in output
    assert stages_run(result.stdout) == {"check"}, output
    assert all(path.read_bytes() == data for path, data in kept.items())
    assert "epochs: -1" in (root / "params.yaml").read_text()
    # What `make params` runs (the Makefile's own venv is not this test's).
    run([sys.executable, "-m", "reglab", "compose", "--output", "params.yaml"], root, env)
    assert "epochs: -1" not in (root / "params.yaml").read_text()
    again = run(["dvc", "repro"], root, env)
    assert stages_run(again.stdout) <= {"check"}, again.stdout
    assert all(path.read_bytes() == data for path, data in kept.items())


def test_experiment_changing_one_variant_reruns_only_it(project):
    root, env, _ = project
    run(["git", "add", "-A"], root, env)
    run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first run"],
        root,
        env,
    )
    result = run(["dvc", "exp", "run", "-S", "variants.l2.kernel.l2=0.01"], root, env)
    assert stages_run(result.stdout) == {"check", "train@l2-42", "compare"}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env).stdout)
    text = json.dumps(shown)
    assert "test_accuracy" in text and "reports/metrics/l2@42.json" in text
    assert "confusion_matrix" not in text and "per_class_accuracy" not in text


def test_another_seed_trains_only_the_new_runs_and_the_leaderboard_shows_mean_and_std(project):
    root, env, _ = project
    result = run(["dvc", "exp", "run", "-S", "seeds=[42,7]"], root, env)
    ran = stages_run(result.stdout)
    seed_stages = {
        "check",
        "train@baseline-7",
        "train@l2-7",
        "compare",
    }
    # Only the new seed trains (l2@42 may come back from the run cache: the
    # experiment before this one changed l2 in the workspace).
    assert seed_stages <= ran and "train@baseline-42" not in ran, result.stdout
    mlflow_client = client(root)
    for name in VARIANTS:
        base = json.loads((root / f"reports/eval/{name}@42.json").read_text())
        extra = json.loads((root / f"reports/eval/{name}@7.json").read_text())
        assert (base["seed"], extra["seed"]) == (42, 7)
        assert (root / f"models/{name}@7/model.keras").is_file()
        tags = mlflow_client.get_run(run_id(root, f"{name}@7")).data.tags
        assert (tags["mlflow.runName"], tags["seed"]) == (f"{name}@7", "7")
        # Two seeds: the leaderboard shows the mean and the sample std of the two.
        accuracies = [base["test_accuracy"], extra["test_accuracy"]]
        row = next(
            line
            for line in (root / "reports/summary.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[2].strip().strip("*") == name
        )
        cells = [cell.strip() for cell in row.split("|")]
        assert cells[3] == "2"
        mean, std = (float(part) for part in cells[4].split(" ± "))
        assert mean == pytest.approx(np.mean(accuracies), abs=5e-5)
        assert std == pytest.approx(np.std(accuracies, ddof=1), abs=5e-5)


def test_dvc_plots_show_renders_learning_curves_and_confusion_matrices(project):
    root, env, _ = project
    shown = json.loads(run(["dvc", "plots", "show", "--json"], root, env).stdout)["data"]
    names = set(shown)
    assert "reports/plots/val_data_loss.csv" in names
    assert {
        "reports/plots/confusion/baseline@42.csv",
        "reports/plots/confusion/l2@42.csv",
    } <= names
    curves = shown["reports/plots/val_data_loss.csv"][0]["content"]
    assert curves["encoding"]["color"] == {"field": "variant", "type": "nominal"}
    assert {row["variant"] for row in curves["data"]["values"]} == {"baseline", "l2"}
    confusion = shown["reports/plots/confusion/l2@42.csv"][0]["content"]["data"]["values"]
    assert len(confusion) == 300  # one row per test image


def test_a_second_pipeline_at_the_same_time_refuses(project):
    import time

    root, env, _ = project
    raw = {path: path.stat().st_mtime_ns for path in (root / "data/raw").iterdir()}
    first = subprocess.Popen(
        ["dvc", "repro", "--force", "--single-item", "compare"],
        cwd=root,
        # The seed experiment before this test left its params.yaml in the workspace.
        env={**env, "REGLAB_ALLOW_STALE_PARAMS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        rwlock = root / ".dvc/tmp/rwlock"
        deadline = time.monotonic() + 120
        while str(first.pid) not in (rwlock.read_text() if rwlock.exists() else ""):
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.1)
        second = subprocess.run(
            ["dvc", "repro", "--force"], cwd=root, env=env, capture_output=True, text=True
        )
    finally:
        output = first.communicate(timeout=600)[0]
    assert second.returncode != 0
    refusal = second.stderr + second.stdout
    assert f"another pipeline is running in this project (PID {first.pid}: " in refusal
    assert "dvc repro --force --single-item compare); wait for it to finish" in refusal
    assert stages_run(second.stdout) == {"check"}, refusal
    assert {path: path.stat().st_mtime_ns for path in (root / "data/raw").iterdir()} == raw
    assert first.returncode == 0, output
    assert "l2" in (root / "reports/summary.md").read_text()


def runs_under_the_launcher(root: Path, experiment_name: str) -> list:
    """The runs nested under the one launcher run `mlflow run` made in ``experiment_name``
    (which ended FINISHED)."""
    mlflow_client = client(root)
    experiment = mlflow_client.get_experiment_by_name(experiment_name)
    runs = mlflow_client.search_runs([experiment.experiment_id])
    launcher = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(launcher) == 1 and launcher[0].info.status == "FINISHED"
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == launcher[0].info.run_id]


def test_mlflow_run_trains_one_variant_with_overrides(project):
    root, env, _ = project
    run(
        [
            "mlflow",
            "run",
            ".",
            "-e",
            "train",
            "-P",
            "variant=l2",
            "-P",
            "overrides=train.epochs=1",
            "--env-manager",
            "local",
            "--experiment-name",
            "adhoc",
        ],
        root,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"},
    )
    nested = runs_under_the_launcher(root, "adhoc")
    assert [r.info.run_name for r in nested] == ["l2@42"]
    assert nested[0].data.params["train.epochs"] == "1"
    assert nested[0].data.metrics["val/accuracy"] > 0.1


def test_mlflow_run_of_the_pipeline_nests_its_runs_under_the_launchers(project):
    """`mlflow run .` (the main entry point: `dvc repro`): a variant changed in conf/
    re-trains, and its run nests under the launcher's run, in the launcher's experiment."""
    root, env, _ = project
    recipe = root / "conf/regularizer/l2.yaml"
    recipe.write_text(recipe.read_text().replace("1.0e-3", "2.0e-3"))
    run([sys.executable, "-m", "reglab", "compose", "--output", "params.yaml"], root, env)
    run(
        ["mlflow", "run", ".", "--env-manager", "local", "--experiment-name", "launched"],
        root,
        {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"},
    )
    nested = runs_under_the_launcher(root, "launched")
    assert "l2@42" in {r.info.run_name for r in nested}
    trained = next(r for r in nested if r.info.run_name == "l2@42")
    assert trained.data.params["regularizer.kernel.l2"] == "0.002"
    assert trained.data.metrics["test/accuracy"] > 0.1
