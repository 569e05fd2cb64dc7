"""What DVC caches holds no machine path and no run id; those live in the run record."""

from __future__ import annotations

import dataclasses
import json

import keras
import pytest

from reglab.config.compose import compose
from reglab.config.paths import RunKey
from reglab.config.schema import config_hash, validate
from reglab.train.checkpoint import TrainingState
from reglab.train.run import run_record, run_summary


def test_run_json_holds_no_path_or_run_id_and_the_record_holds_them(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    state = TrainingState(epoch=2, history=[{"val_data_loss": 0.5}], run_id="abc123")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = run_summary(RunKey("l2", 42), model, state, "f" * 16)
    text = json.dumps(summary)
    assert str(tmp_path) not in text and "abc123" not in text and "sqlite" not in text
    assert not {"mlflow_run_id", "tracking_uri", "resumed_from_epoch"} & set(summary)
    assert (summary["variant"], summary["seed"], summary["epochs_trained"]) == ("l2", 42, 2)
    record = run_record(RunKey("l2", 42), state, uri, "f" * 16, 1)
    assert (record["mlflow_run_id"], record["tracking_uri"]) == ("abc123", uri)
    assert record["resumed_from_epoch"] == 1


def test_the_config_hash_does_not_depend_on_the_tracking_store():
    config = validate(compose())
    elsewhere = dataclasses.replace(
        config, tracking=dataclasses.replace(config.tracking, uri="sqlite:////home/x/mlflow.db")
    )
    assert config_hash(config) == config_hash(elsewhere)
    fewer = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=1))
    assert config_hash(fewer) != config_hash(config)


@pytest.mark.slow
def test_two_clones_of_one_commit_give_the_same_dvc_hashes(tmp_path):
    """The same training in two folders: every DVC output has the same md5."""
    import yaml

    from tests.conftest import PROJECT_ROOT
    from tests.project_copy import clean_environment, copy_project, run

    extra = {
        "conf/variants/mine.yaml": "# @package variants\ndefaults:\n"
        "  - /regularizer@baseline: none\n",
        "conf/experiment/mine.yaml": "# @package _global_\ndefaults:\n  - tiny\n"
        "  - override /variants: mine\n",
        "conf/config.yaml": (PROJECT_ROOT / "conf/config.yaml")
        .read_text()
        .replace("  - experiment: null", "  - experiment: mine"),
    }
    hashes = []
    for folder in ("first clone", "elsewhere/second"):
        root = copy_project(tmp_path / folder, files=extra)
        run(["dvc", "repro"], root, clean_environment())
        lock = yaml.safe_load((root / "dvc.lock").read_text())
        hashes.append(
            {
                (stage, out["path"]): out["md5"]
                for stage, entry in lock["stages"].items()
                for out in entry.get("outs", [])
            }
        )
        record = json.loads((root / ".reglab/runs/baseline@42.json").read_text())
        assert record["mlflow_run_id"]  # the run is recorded outside DVC's outputs
    assert any(stage.startswith("train@") for stage, _ in hashes[0])
    assert hashes[0] == hashes[1]
