"""Shared fixtures: the real conf/, shrunk; a temporary MLflow store; tiny real data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Overrides that shrink the real config to seconds (the `tiny` experiment preset).
TINY = ["experiment=tiny"]


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh sqlite MLflow store for one test, in MLFLOW_TRACKING_URI (which the entry
    layer puts in tracking.uri) and as MLflow's current URI for the test's own calls."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts of a sqlite store land in ./mlruns
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def digits_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's bundled 8x8 digits as float32 NHWC in [0, 1]: real, tiny, offline."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    return {
        "train": (x[:1000], y[:1000]),
        "val": (x[1000:1400], y[1000:1400]),
        "test": (x[1400:], y[1400:]),
    }


def fit_digits(model, splits, *, seed: int, label: str, epochs: int, state=None, **options):
    """reglab.train.fit.fit on digits splits, batch 64, shuffled: the tests' common call."""
    from reglab.train.fit import fit

    return fit(
        model,
        splits["train"],
        splits["val"],
        state,
        num_classes=10,
        epochs=epochs,
        batch_size=64,
        shuffle=True,
        seed=seed,
        label=label,
        **options,
    )


def served_inputs(processed: Path):
    """The test split of a processed folder as model inputs (uint8 pixels scaled as the
    input pipeline scales them): what a served model takes."""
    from reglab.data.prepare import load_splits

    return load_splits(processed, splits=("test",))["test"][0]


# Scikit-learn's digits through the real stages, shrunk: seconds per variant.
DIGITS = [
    "data=digits",
    "experiment=tiny",
    "model.padding=same",
    "train.epochs=3",
    "train.batch_size=64",
    "train.train_probe_size=200",
]


def make_project(root: Path, overrides: list[str]) -> Path:
    """A project folder with params.yaml and processed digits, made by the real stages."""
    from reglab.config.compose import compose, to_yaml

    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(to_yaml(compose(DIGITS + overrides)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for stage in ("download", "preprocess"):
        subprocess.run(
            [sys.executable, "-m", f"reglab.stages.{stage}"],
            cwd=root,
            env=env,
            check=True,
            capture_output=True,
        )
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("digits"), []) / "data"


def config_for(*overrides: str):
    from reglab.config.compose import compose_config

    return compose_config(DIGITS + list(overrides))


# The longest modules first, so that with `-n 2 --dist loadfile` (make test) the
# two workers end near the same time instead of one waiting on the last long module.
LONGEST_FIRST = (
    "test_team_stack.py",
    "test_pipeline_e2e.py",
    "test_tune.py",
    "test_tune_pipeline.py",
    "test_path_with_space.py",
    "test_runner.py",
    "test_tracking_server.py",
    "test_mlflow_ui.py",
    "test_bench.py",
    "test_progress.py",
    "test_stages.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module and among the rest stays
