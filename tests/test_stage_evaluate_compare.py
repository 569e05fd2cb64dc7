"""The evaluate and compare stages on tiny real Keras models and a real sqlite MLflow store."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from reglab.config.compose import compose, to_yaml
from reglab.config.schema import ConfigError
from reglab.core.errors import ReglabError
from reglab.data.prepare import write_processed
from reglab.evaluate.evaluation import EvaluationError
from reglab.stages import compare as compare_stage
from reglab.stages import evaluate as evaluate_stage
from tests.conftest import digits_splits

# The full tier: the real train, evaluate and compare stages in subprocesses.
pytestmark = pytest.mark.slow

EXPERIMENT = "reglab-stage-test"
VARIANTS = ("baseline", "l2")
SEED = 42


def tiny_model(l2: float, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", kernel_regularizer=regularizer),
            keras.layers.Flatten(),
            keras.layers.Dense(10, kernel_regularizer=regularizer),
        ]
    )


def write_params(root: Path, tracking_uri: str) -> None:
    """params.yaml as the stages read it: the real conf/, shrunk to two variants."""
    cfg = compose(["data=digits", "experiment=tiny", f"tracking.experiment={EXPERIMENT}"])
    cfg.variants = {name: cfg.variants[name] for name in VARIANTS}
    cfg.variants.l2.kernel.l2 = 1e-2
    cfg.tracking.uri = tracking_uri
    (root / "params.yaml").write_text(to_yaml(cfg))


def write_digits(root: Path, splits: dict) -> None:
    """The digits splits as preprocess writes them, with a manifest for params.yaml's data."""
    from reglab.config.compose import load_params
    from reglab.data.prepare import described

    data = load_params(root / "params.yaml", check_fresh=False).data
    # Stored as preprocess stores them: the raw pixels (0..16), scaled when read.
    raw = {name: (np.round(x * 16).astype(np.uint8), y) for name, (x, y) in splits.items()}
    write_processed(root / "data/processed", raw, described(data), num_classes=10)


@pytest.fixture(scope="module")
def splits() -> dict:
    return digits_splits()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, splits: dict) -> dict:
    """A project folder (cwd) with processed digits, two trained variants and their MLflow runs.

    Module-scoped: creating an MLflow sqlite store and fitting models is the slow part.
    """
    import mlflow

    root = tmp_path_factory.mktemp("project")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        patch.chdir(root)  # artifacts of a sqlite store land in ./mlruns
        mlflow.set_tracking_uri(tracking_uri)
        write_params(root, tracking_uri)
        write_digits(root, splits)
        mlflow.set_experiment(EXPERIMENT)
        run_ids = {}
        with mlflow.start_run(run_name="pipeline") as parent:
            pass  # the train stage nests variant runs under one pipeline run
        x_train, y_train = splits["train"]
        for index, (variant, l2) in enumerate(zip(VARIANTS, (0.0, 1e-2), strict=True)):
            model = tiny_model(l2, seed=index)
            model.compile(
                optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            fitted = model.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)
            model_dir = root / "models" / f"{variant}@{SEED}"
            model_dir.mkdir(parents=True)
            model.save(model_dir / "model.keras")
            tags = {"mlflow.parentRunId": parent.info.run_id}
            with mlflow.start_run(run_name=variant, tags=tags) as run:
                mlflow.log_metric("train/data_loss", fitted.history["loss"][-1], step=2)
            run_ids[variant] = run.info.run_id
            write_run_json(model_dir, variant, run.info.run_id, int(model.count_params()))
            losses = fitted.history["loss"]
            write_history(root, f"{variant}@{SEED}", [(loss, loss + 0.1) for loss in losses])
        yield {
            "root": root,
            "splits": splits,
            "run_ids": run_ids,
            "uri": tracking_uri,
            "parent": parent.info.run_id,
        }
        while mlflow.active_run():
            mlflow.end_run()


def write_history(root: Path, key: str, losses: list[tuple[float, float]]) -> None:
    """reports/history/<key>.csv with (train, validation) data loss per epoch."""
    history = root / "reports/history" / f"{key}.csv"
    history.parent.mkdir(parents=True, exist_ok=True)
    with history.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("epoch", "train_data_loss", "val_data_loss"))
        writer.writerows((epoch, *pair) for epoch, pair in enumerate(losses, 1))


def write_run_json(model_dir: Path, variant: str, run_id: str, params_count: int = 0) -> None:
    info = {
        "variant": variant,
        "seed": SEED,
        "epochs_trained": 2,
        "params_count": params_count,
    }
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "run.json").write_text(json.dumps(info))
    # The MLflow run, recorded outside DVC's outputs as the train stage does.
    runs = model_dir.parent.parent / ".reglab/runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / f"{model_dir.name}.json").write_text(json.dumps({"mlflow_run_id": run_id}))


@pytest.fixture
def bare_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, splits: dict) -> Path:
    """Config and data but no trained model: for the checks that fail before any model loads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    write_params(tmp_path, f"sqlite:///{tmp_path / 'never-created.db'}")
    write_digits(tmp_path, splits)
    write_run_json(tmp_path / f"models/l2@{SEED}", "l2", "no-run")
    return tmp_path


def test_evaluate_then_compare(project, monkeypatch):
    from mlflow.tracking import MlflowClient

    root, splits = project["root"], project["splits"]
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", project["uri"])
    for variant in VARIANTS:
        evaluate_stage.main([f"{variant}@{SEED}"])

    # The JSON holds exactly what an independent computation gives.
    report = json.loads((root / "reports/eval/l2@42.json").read_text())
    model = keras.saving.load_model(root / "models/l2@42/model.keras")
    x_test, y_test = splits["test"]
    logits = model.predict(x_test, verbose=0)
    expected_loss = float(
        keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y_test, logits)
    )
    assert report["test_accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y_test))
    assert report["test_data_loss"] == pytest.approx(expected_loss, rel=1e-4)
    x_train, y_train = splits["train"]
    train_accuracy = np.mean(model.predict(x_train, verbose=0).argmax(1) == y_train)
    assert report["train_accuracy"] == pytest.approx(train_accuracy)
    assert report["generalization_gap"] == pytest.approx(train_accuracy - report["test_accuracy"])
    assert report["data_loss_gap"] == pytest.approx(
        report["test_data_loss"] - report["train_data_loss"]
    )
    assert np.sum(report["confusion_matrix"]) == len(y_test)
    assert len(report["per_class_accuracy"]) == 10
    kernels = np.concatenate([layer.kernel.numpy().ravel() for layer in model.layers[::2]])
    assert report["sparsity"] == pytest.approx(np.mean(np.abs(kernels) < 1e-3))
    assert "mlflow_run_id" not in report  # a DVC output: no run id, no path
    assert (report["variant"], report["seed"], report["epochs_trained"]) == ("l2", 42, 2)
    assert 0 <= report["ece"] <= 1

    with (root / "reports/plots/confusion/l2@42.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = report["class_names"]
    predicted = logits.argmax(1)
    assert [(row["actual"], row["predicted"]) for row in rows] == [
        (names[a], names[p]) for a, p in zip(y_test, predicted, strict=True)
    ]

    # The first-layer kernel, bit for bit, for the compare stage's histograms.
    weights = json.loads((root / "reports/weights/l2@42.json").read_text())
    kernel = model.layers[0].kernel.numpy()
    assert (weights["variant"], weights["seed"], weights["shape"]) == ("l2", 42, [3, 3, 1, 4])
    assert weights["layer"] == f"{model.layers[0].name}/kernel"
    assert np.asarray(weights["values"], np.float32).reshape(kernel.shape).tobytes() == (
        kernel.tobytes()
    )
    # The largest Dense kernel as counts on the fixed bins, not its values.
    dense = model.layers[-1].kernel.numpy()
    largest = weights["largest_dense"]
    assert (largest["layer"], largest["shape"]) == (f"{model.layers[-1].name}/kernel", [144, 10])
    assert largest["counts"] == np.histogram(dense, bins=largest["edges"])[0].tolist()
    assert largest["zeros"] == int(np.sum(dense == 0))

    # The test metrics arrived in the variant's own run, with the confusion matrix.
    client = MlflowClient(project["uri"])
    metrics = client.get_run(project["run_ids"]["l2"]).data.metrics
    assert metrics["test/accuracy"] == pytest.approx(report["test_accuracy"])
    assert metrics["test/data_loss"] == pytest.approx(report["test_data_loss"])
    assert metrics["test/ece"] == pytest.approx(report["ece"])
    assert metrics["test/generalization_gap"] == pytest.approx(report["generalization_gap"])
    assert {f"test/class_accuracy/{digit}" for digit in range(10)} <= set(metrics)
    artifacts = {a.path for a in client.list_artifacts(project["run_ids"]["l2"], "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/confusion_matrix.json"} <= artifacts

    compare_stage.main([])
    summary = (root / "reports/summary.md").read_text()
    reports = {v: json.loads((root / f"reports/eval/{v}@42.json").read_text()) for v in VARIANTS}
    best = max(VARIANTS, key=lambda v: reports[v]["test_accuracy"])
    best_accuracy = reports[best]["test_accuracy"]
    assert (
        f"| 1 | {'**baseline**' if best == 'baseline' else best} | 1 | {best_accuracy:.4f} |"
        in (summary)
    )
    curves = list(csv.DictReader((root / "reports/plots/val_data_loss.csv").open()))
    assert [(r["variant"], r["epoch"]) for r in curves[:2]] == [
        ("baseline", "1"),
        ("baseline", "2"),
    ]
    figures = ("val_data_loss.png", "first_layer_weights.png", "largest_dense_weights.png")
    for name in (*figures, "test_metrics.png"):
        assert (root / "reports/figures" / name).stat().st_size > 0
    experiment = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs(
        [experiment.experiment_id], "attributes.run_name = 'compare'", max_results=5
    )
    assert run.data.tags["best_variant"] == best
    assert run.data.tags["mlflow.parentRunId"] == project["parent"]
    assert run.data.metrics["test_accuracy/l2"] == pytest.approx(reports["l2"]["test_accuracy"])
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.md", "figures", "leaderboard.json"} <= logged


def test_evaluate_refuses_a_bad_key_an_unknown_variant_or_seed_and_a_missing_model(bare_project):
    with pytest.raises(ReglabError, match="expected <variant>@<seed>"):
        evaluate_stage.main(["l2"])
    with pytest.raises(ConfigError, match="variant='dropout': unknown"):
        evaluate_stage.main(["dropout@42"])
    with pytest.raises(ConfigError, match=r"seed 7 is not in seeds=\[42\]"):
        evaluate_stage.main(["l2@7"])
    with pytest.raises(EvaluationError, match="model.keras: not found"):
        evaluate_stage.main(["l2@42"])
    assert not (bare_project / "reports").exists()
    assert not (bare_project / "never-created.db").exists()


def test_evaluate_refuses_a_run_json_of_another_variant(bare_project):
    write_run_json(bare_project / "models/l2@42", "baseline", "no-run")
    with pytest.raises(EvaluationError, match="does not match its folder 'l2@42'"):
        evaluate_stage.main(["l2@42"])


# Runs the compare stage as DVC does, then lists what it imported.
COMPARE_AND_LIST_MODULES = """
import json, runpy, sys
sys.argv = ["compare"]
runpy.run_module("reglab.stages.compare", run_name="__main__")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))))
"""


def test_compare_stage_reads_files_only_and_never_imports_tensorflow(tmp_path):
    """Eval reports, histories and weights files in, summary and figures out: no model."""
    from mlflow.tracking import MlflowClient

    from reglab.model.weights import kernel_record

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_params(tmp_path, uri)
    rng = np.random.default_rng(0)
    for variant, accuracy, spread in (("baseline", 0.81, 0.3), ("l2", 0.86, 0.05)):
        key = f"{variant}@{SEED}"
        report = {
            "variant": variant,
            "seed": SEED,
            "test_accuracy": accuracy,
            "test_data_loss": 1 - accuracy,
            "generalization_gap": 0.02,
        }
        # The train stage's record of the model's MLflow run, outside DVC's outputs.
        (tmp_path / ".reglab/runs").mkdir(parents=True, exist_ok=True)
        record = {"mlflow_run_id": f"no-such-run-{variant}"}
        (tmp_path / f".reglab/runs/{key}.json").write_text(json.dumps(record))
        (tmp_path / "reports/eval").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"reports/eval/{key}.json").write_text(json.dumps(report))
        write_history(tmp_path, key, [(0.9, 1.0), (0.5, spread + 0.5)])
        kernel = rng.normal(0, spread, (3, 3, 1, 4))
        record = {"variant": variant, "seed": SEED, **kernel_record("conv_1/kernel", kernel)}
        (tmp_path / "reports/weights").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"reports/weights/{key}.json").write_text(json.dumps(record))

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run(
        [sys.executable, "-c", COMPARE_AND_LIST_MODULES],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []

    summary = (tmp_path / "reports/summary.md").read_text()
    assert "| 1 | l2 | 1 | 0.8600 | +0.0500 | 0.1400 | -0.0500 |" in summary
    assert "| 2 | **baseline** | 1 | 0.8100 | – | 0.1900 | – |" in summary
    with (tmp_path / "reports/plots/val_data_loss.csv").open(newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["variant", "epoch", "val_data_loss", "train_data_loss"],
            ["baseline", "1", "1.0", "0.9"],
            ["baseline", "2", "0.8", "0.5"],
            ["l2", "1", "1.0", "0.9"],
            ["l2", "2", "0.55", "0.5"],
        ]
    for name in ("first_layer_weights.png", "val_data_loss.png", "test_metrics.png"):
        assert (tmp_path / "reports/figures" / name).read_bytes()[:4] == b"\x89PNG", name
    # The variants' runs are not in this store: the compare run is logged top-level.
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name(EXPERIMENT).experiment_id],
        "attributes.run_name = 'compare'",
    )
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["best_variant"] == "l2"
    assert run.data.metrics["best/accuracy_vs_baseline"] == pytest.approx(0.05)
    assert "MLflow run no-such-run-l2 not found in this store" in done.stderr


def test_strength_sweeps_of_the_real_presets():
    import dataclasses

    from reglab.config.compose import compose_config
    from reglab.report import strength_sweeps

    def sweeps(overrides):
        config = compose_config(overrides)
        recipes = {name: dataclasses.asdict(r) for name, r in config.variants.items()}
        return {sweep.label: sweep.variants for sweep in strength_sweeps(recipes)}

    assert sweeps([]) == {}
    assert sweeps(["experiment=all"]) == {}
    assert sweeps(["experiment=strength_sweep"]) == {
        "kernel.l2": ["l2_1e-5", "l2_1e-4", "l2_1e-3", "l2_1e-2", "l2_1e-1"],
        "dropout.{conv_rate,dense_rate}": [
            "dropout_10",
            "dropout_30",
            "dropout_50",
            "dropout_70",
        ],
    }
