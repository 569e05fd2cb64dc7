"""Your model, your data, end to end: the real `dvc repro` on a user's builder module and
on an image folder, a CSV table and a `.npz` the test writes, in a copy of the project.

One copy, three data sets in turn (each a preset composed into params.yaml, then `dvc
repro`); a baseline and an L2 variant, one epoch each (ten on the 98 rows of the
table). Every check reads the values inside MLflow's store, the eval reports and the
leaderboard.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PROJECT_ROOT
from tests.project_copy import clean_environment, compose_params, copy_project, run

pytestmark = pytest.mark.slow

USER_MODULE = '''
"""A user's models: nothing of reglab's in here."""
import keras
from keras import layers


def conv_net(input_shape, num_classes, width=8):
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="features")(inputs)
    x = layers.MaxPooling2D(2, name="shrink")(x)
    x = layers.Flatten(name="flat")(x)
    x = layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax", name="scores")(x))


def table_net(input_shape, num_classes):
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Dense(24, activation="relu", name="wide"),
            layers.Dense(num_classes, name="out"),
        ]
    )
'''

VARIANTS = (
    "# @package variants\ndefaults:\n"
    "  - /regularizer@baseline: none\n  - /regularizer@l2: [none, l2]\n"
)


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = digits.target < 4  # four classes, about 720 images
    images = np.round(digits.images[keep] * (255 / 16)).astype(np.uint8)
    return images, digits.target[keep]


def write_image_folder(folder: Path) -> Path:
    from PIL import Image

    images, labels = digits_images()
    names = ["zero", "one", "two", "three"]
    for index, (image, label) in enumerate(zip(images[:400], labels[:400], strict=True)):
        path = folder / names[label] / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((16, 16)).save(path)
    return folder


def write_csv(path: Path) -> Path:
    from sklearn.datasets import load_wine

    wine = load_wine()
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow([*wine.feature_names, "cultivar"])
        for row, label in zip(wine.data, wine.target, strict=True):
            writer.writerow([*row, f"cultivar_{label}"])
    return path


def write_npz(path: Path) -> Path:
    images, labels = digits_images()
    np.savez(path, x=images[:, :, :, None], y=labels)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str], dict[str, Path]]:
    base = tmp_path_factory.mktemp("user_e2e")
    sources = {
        "images": write_image_folder(base / "images"),
        "table": write_csv(base / "wine.csv"),
        "arrays": write_npz(base / "digits.npz"),
    }
    files = {
        "mymodels/__init__.py": "",
        "mymodels/nets.py": textwrap.dedent(USER_MODULE),
        "conf/variants/pair.yaml": VARIANTS,
        # A plain `dvc repro` runs the committed composition of conf/: the test's
        # settings are a preset, as a user's would be.
        "conf/config.yaml": (PROJECT_ROOT / "conf/config.yaml")
        .read_text()
        .replace("  - experiment: null", "  - experiment: mine"),
        "conf/experiment/mine.yaml": "# @package _global_\n",
    }
    root = copy_project(base / "project", files=files)
    return root, clean_environment(), sources


# Each data set as the preset a user would write: conf/experiment/mine.yaml.
PRESET = """# @package _global_
defaults:
  - tiny
  - override /data: {format}
  - override /model: keras
  - override /variants: pair
model:
  builder: mymodels.nets.{builder}
  source: mymodels
tracking:
  log_model: true
train:
  epochs: {epochs}
data:
  path: {path}
  validation_size: {validation}
  test_holdout_size: {holdout}
  train_size: null
  test_size: null
{extra}"""
CASES = {
    "image_folder": {"builder": "conv_net", "source": "images", "validation": 60,
                     "holdout": 80, "epochs": 1, "extra": "  color_mode: grayscale\n"},
    "csv": {"builder": "table_net", "source": "table", "validation": 40,
            "holdout": 40, "epochs": 10, "extra": "  label_column: cultivar\n"},
    "npz": {"builder": "conv_net", "source": "arrays", "validation": 60,
            "holdout": 120, "epochs": 1, "extra": ""},
}  # fmt: skip
CLASSES = {
    "image_folder": ["one", "three", "two", "zero"],
    "csv": ["cultivar_0", "cultivar_1", "cultivar_2"],
    "npz": ["0", "1", "2", "3"],
}


def mlflow_runs(root: Path) -> dict:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reglab")
    return client, client.search_runs([experiment.experiment_id], order_by=["start_time DESC"])


@pytest.mark.parametrize("case", list(CASES))
def test_dvc_repro_trains_and_tests_the_users_model_on_the_users_data(project, case):
    root, env, sources = project
    settings = CASES[case]
    preset = PRESET.format(format=case, path=sources[settings["source"]], **settings)
    (root / "conf/experiment/mine.yaml").write_text(preset)
    compose_params(root, env)  # what `make params` does
    completed = run(["dvc", "repro"], root, env)
    assert "Running stage 'train@l2-42'" in completed.stdout

    manifest = json.loads((root / "data/processed/manifest.json").read_text())
    assert manifest["class_names"] == CLASSES[case]
    reports = {}
    for variant in ("baseline", "l2"):
        report = json.loads((root / f"reports/eval/{variant}@42.json").read_text())
        assert report["class_names"] == CLASSES[case]
        assert 1 / len(CLASSES[case]) < report["test_accuracy"] <= 1.0, (case, variant, report)
        reports[variant] = report

    client, runs = mlflow_runs(root)
    by_id = {run_info.info.run_id: run_info for run_info in runs}
    ids = {
        variant: json.loads((root / f".reglab/runs/{variant}@42.json").read_text())
        for variant in ("l2", "baseline")
    }
    l2 = by_id[ids["l2"]["mlflow_run_id"]]
    baseline = by_id[ids["baseline"]["mlflow_run_id"]]
    assert l2.data.params["model.builder"] == f"mymodels.nets.{settings['builder']}"
    assert l2.data.tags["dataset"] == case
    assert l2.data.metrics["test/accuracy"] == pytest.approx(reports["l2"]["test_accuracy"])
    assert l2.data.metrics["train/penalty"] > 0 and baseline.data.metrics["train/penalty"] == 0
    summary = Path(client.download_artifacts(l2.info.run_id, "model_summary.txt")).read_text()
    hidden = "hidden" if case != "csv" else "wide"
    output = "scores" if case != "csv" else "out"
    hidden_row = next(line for line in summary.splitlines() if line.startswith(f"{hidden} "))
    output_row = next(line for line in summary.splitlines() if line.startswith(f"{output} "))
    assert "L2(l2=0.001)" in hidden_row and "L2" not in output_row
    code = {item.path for item in client.list_artifacts(l2.info.run_id, "code/mymodels")}
    assert code == {"code/mymodels/__init__.py", "code/mymodels/nets.py"}

    # The served model gives probabilities over the data's own classes.
    import os

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        served = mlflow.pyfunc.load_model(f"runs:/{l2.info.run_id}/model")
    finally:
        os.chdir(cwd)
    x = np.load(root / "data/processed/test_x.npy")[:8].astype(np.float32)
    x = x / np.float32(manifest["pixel_max"])
    probabilities = served.predict(x)
    assert list(probabilities.columns) == CLASSES[case]
    np.testing.assert_allclose(probabilities.to_numpy().sum(axis=1), 1.0, rtol=1e-5)

    leaderboard = (root / "reports/summary.md").read_text()
    for variant in ("baseline", "l2"):
        assert f"{reports[variant]['test_accuracy']:.4f}" in leaderboard, (variant, leaderboard)


def test_editing_the_users_module_reruns_the_train_stages_only(project):
    root, env, _ = project
    status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    assert status == {}
    module = root / "mymodels" / "nets.py"
    module.write_text(module.read_text() + "\n# a comment is an edit too\n")
    status = json.loads(run(["dvc", "status", "--json"], root, env).stdout)
    assert set(status) == {"train@baseline-42", "train@l2-42"}
