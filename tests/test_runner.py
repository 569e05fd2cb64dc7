"""Training one variant for real: determinism, resume after SIGKILL, failures, MLflow runs.

Runs on scikit-learn's bundled digits through the real download and preprocess
stages, in a temporary project folder with its own sqlite MLflow store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from mlflow import MlflowClient

from reglab.config.compose import compose, to_yaml
from reglab.tracking import TrackingUnavailable
from reglab.tracking.store import check_sqlite_store
from reglab.train.fit import TrainingDiverged
from reglab.train.run import train_variant
from tests.conftest import DIGITS, config_for

# The full tier: real trainings in subprocesses (kill and resume, determinism).
pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path, data_dir, monkeypatch):
    """A fresh working folder sharing the processed digits; MLflow store inside it."""
    (tmp_path / "data").symlink_to(data_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return tmp_path


def saved_weights(path: Path) -> list[np.ndarray]:
    import reglab.model.regularizers  # noqa: F401 - registers custom regularizers

    return keras.saving.load_model(path, safe_mode=True).get_weights()


def store(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def test_same_seed_gives_the_same_weights_bit_for_bit_and_another_seed_does_not(project):
    config = config_for()
    first = train_variant(config, "dropout@42")
    weights_first = saved_weights(project / "models/dropout@42/model.keras")
    model_bytes = (project / "models/dropout@42/model.keras").read_bytes()
    history_first = (project / "reports/history/dropout@42.csv").read_text()
    keras.backend.clear_session()
    second = train_variant(config, "dropout@42")
    weights_second = saved_weights(project / "models/dropout@42/model.keras")
    assert first["mlflow_run_id"] != second["mlflow_run_id"]
    assert all(np.array_equal(a, b) for a, b in zip(weights_first, weights_second, strict=True))
    # The same bytes, so DVC records one hash for the same model in every clone.
    assert (project / "models/dropout@42/model.keras").read_bytes() == model_bytes
    assert (project / "reports/history/dropout@42.csv").read_text() == history_first

    keras.backend.clear_session()
    # Seed 7 asked for among several seeds trains the same model as seed 7 alone.
    train_variant(config_for("seeds=[42,7]"), "dropout@7")
    weights_other = saved_weights(project / "models/dropout@7/model.keras")
    assert not all(np.array_equal(a, b) for a, b in zip(weights_first, weights_other, strict=True))
    keras.backend.clear_session()
    train_variant(config_for("seeds=[7]"), "dropout@7")
    weights_alone = saved_weights(project / "models/dropout@7/model.keras")
    assert all(np.array_equal(a, b) for a, b in zip(weights_other, weights_alone, strict=True))


def test_runs_are_grouped_under_one_pipeline_parent_with_tags(project):
    config = config_for()
    baseline = train_variant(config, "baseline@42")
    keras.backend.clear_session()
    l2 = train_variant(config, "l2@42")
    client = store(project)
    runs = [client.get_run(s["mlflow_run_id"]) for s in (baseline, l2)]
    parents = {run.data.tags["mlflow.parentRunId"] for run in runs}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert parent.info.run_name == "pipeline"
    for run, name in zip(runs, ("baseline", "l2"), strict=True):
        tags = run.data.tags
        assert tags["variant"] == name and tags["dataset"] == "digits" and tags["seed"] == "42"
        assert run.info.run_name == f"{name}@42" and run.data.params["seed"] == "42"
        assert tags["git_dirty"] in ("true", "false", "unknown")
        assert len(tags["config_hash"]) == 16
        assert run.data.params["regularizer.kernel.l2"] == str(config.variants[name].kernel.l2)
        # Data loss and penalty apart, per epoch; weight statistics per layer.
        history = client.get_metric_history(run.info.run_id, "train/penalty")
        assert [m.step for m in history] == [1, 2, 3]
        sparsity = client.get_metric_history(run.info.run_id, "weights/conv_1/kernel/sparsity")
        assert len(sparsity) == 3 and all(0 <= m.value <= 1 for m in sparsity)
        images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
        assert images, "kernel histograms are logged as images with a step"
        raw = json.loads(
            Path(client.download_artifacts(run.info.run_id, "weights/histograms.json")).read_text()
        )
        assert sorted(raw, key=int) == ["0", "3"]
        assert sum(raw["0"]["conv_1/kernel"]["counts"]) == 3 * 3 * 1 * 32
    assert runs[0].data.metrics["train/penalty"] == 0
    assert runs[1].data.metrics["train/penalty"] > 0
    inputs = client.get_run(l2["mlflow_run_id"]).inputs.dataset_inputs
    assert {i.tags[0].value for i in inputs} >= {"training", "validation"}


def test_a_diverging_run_ends_failed_and_writes_no_model(project):
    config = config_for("optimizer.name=sgd", "optimizer.learning_rate=1e12")
    with pytest.raises(TrainingDiverged, match="variant baseline@42: the training loss became"):
        train_variant(config, "baseline@42")
    client = store(project)
    experiment = client.get_experiment_by_name("reglab")
    (run,) = client.search_runs([experiment.experiment_id], "tags.variant = 'baseline'")
    assert run.info.status == "FAILED"
    assert not (project / "models/baseline@42").exists()
    assert not (project / "reports/history/baseline@42.csv").exists()
    assert not list((project / "models").glob(".baseline*"))


def test_data_prepared_for_another_config_is_refused_naming_the_key(project):
    """The run's record must be true: no training on data the config does not describe."""
    from reglab.data.errors import DataError

    with pytest.raises(DataError) as refused:
        train_variant(config_for("data.train_size=300"), "baseline@42")
    assert str(refused.value) == (
        "data/processed holds data prepared with data.train_size=400, not "
        "data.train_size=300; prepare it for this config with "
        "`dvc exp run -S 'data.train_size=300'` (or `make params && dvc repro preprocess` "
        "after changing conf/)"
    )
    with pytest.raises(DataError, match=r"data.split_seed=42, not data.split_seed=7"):
        train_variant(config_for("data.split_seed=7"), "baseline@42")
    assert not (project / "mlflow.db").exists() and not (project / "models").exists()


def test_unreachable_tracking_server_fails_fast_before_training(project):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    started = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=rf"http://127.0.0.1:{port} is unreachable"):
        train_variant(config_for(f"tracking.uri=http://127.0.0.1:{port}"), "baseline@42")
    # Seconds, where MLflow's own retries of an unreachable server take minutes; the
    # bound leaves room for a loaded machine (13 s were seen with the suite running).
    assert time.monotonic() - started < 30
    assert not (project / "models").exists() or not any((project / "models").iterdir())


def start_training(root: Path, variant: str) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen(
        [sys.executable, "-m", "reglab.stages.train", variant],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_checkpoint(root: Path, variant: str, process: subprocess.Popen, epoch: int) -> None:
    state = root / ".reglab/checkpoints" / variant / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if state.exists() and json.loads(state.read_text())["epoch"] >= epoch:
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkilled_training_resumes_and_ends_like_an_uninterrupted_run(tmp_path, data_dir):
    overrides = ["train.epochs=4"]
    straight = tmp_path / "straight"
    killed = tmp_path / "killed"
    for root in (straight, killed):
        root.mkdir()
        (root / "data").symlink_to(data_dir)
        (root / "params.yaml").write_text(to_yaml(compose(DIGITS + overrides)))

    assert start_training(straight, "dropout@42").wait() == 0

    process = start_training(killed, "dropout@42")
    wait_for_checkpoint(killed, "dropout@42", process, epoch=2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "models/dropout@42").exists()  # nothing half-written was trusted
    resumed = start_training(killed, "dropout@42")
    output = resumed.communicate()[0]
    assert resumed.returncode == 0, output
    assert "resuming from the checkpoint after epoch" in output

    run_info = json.loads((killed / ".reglab/runs/dropout@42.json").read_text())
    assert run_info["resumed_from_epoch"] >= 2
    a = saved_weights(straight / "models/dropout@42/model.keras")
    b = saved_weights(killed / "models/dropout@42/model.keras")
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert (killed / "reports/history/dropout@42.csv").read_text() == (
        straight / "reports/history/dropout@42.csv"
    ).read_text()
    client = store(killed)
    run = client.get_run(run_info["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "val/data_loss")}
    assert steps == {1, 2, 3, 4}
    assert not (killed / ".reglab/checkpoints/dropout@42").exists()


def test_a_killed_command_line_run_resumes_when_the_same_command_runs_again(tmp_path, data_dir):
    """Hydra makes a new output folder each time; the checkpoint is found all the same."""
    (tmp_path / "data").symlink_to(data_dir)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "reglab", "train", "variant=dropout", *DIGITS]
    command += ["train.epochs=4", "tracking.log_model=false"]
    process = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for_checkpoint(tmp_path, "adhoc/dropout@42", process, epoch=2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming from the checkpoint after epoch" in again.stdout + again.stderr
    client = store(tmp_path)
    experiment = client.get_experiment_by_name("reglab")
    (run,) = client.search_runs([experiment.experiment_id], "tags.variant = 'dropout'")
    assert run.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/data_loss"))
    assert steps == [1, 2, 3, 4]
    assert len(list((tmp_path / "outputs").rglob("model.keras"))) == 1


def test_a_checkpoint_for_other_code_starts_over_and_ends_its_run_killed(project, caplog):
    config = config_for("train.epochs=2")
    checkpoints = project / ".reglab/checkpoints/baseline@42"
    first = train_variant(config, "baseline@42")
    # As if killed after epoch 1 with a RUNNING run, under code that has changed since.
    client = store(project)
    orphan = client.create_run(client.get_run(first["mlflow_run_id"]).info.experiment_id)
    checkpoints.mkdir(parents=True)
    (checkpoints / "state.json").write_text(
        json.dumps({"epoch": 1, "run_id": orphan.info.run_id, "fingerprint": {"code": "old"}})
    )
    leftover = project / "models/.baseline@42.tmp-abc"
    leftover.mkdir()
    keras.backend.clear_session()
    second = train_variant(config, "baseline@42")
    assert "was written for another config and code and data" in caplog.text
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"
    assert second["resumed_from_epoch"] == 0 and second["epochs_trained"] == 2
    assert not leftover.exists() and not checkpoints.exists()


def test_sigterm_ends_the_run_killed(tmp_path, data_dir):
    root = tmp_path / "project"
    root.mkdir()
    (root / "data").symlink_to(data_dir)
    (root / "params.yaml").write_text(to_yaml(compose(DIGITS + ["train.epochs=50"])))
    process = start_training(root, "baseline@42")
    wait_for_checkpoint(root, "baseline@42", process, epoch=1)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    assert process.returncode != 0
    client = store(root)
    experiment = client.get_experiment_by_name("reglab")
    (run,) = client.search_runs([experiment.experiment_id], "tags.variant = 'baseline'")
    assert run.info.status == "KILLED"
    assert not (root / "models/baseline@42").exists()


def test_command_line_multirun_tracks_each_job(tmp_path, data_dir):
    """`reglab train -m`: Hydra's sweep, one MLflow run per job, outputs out of DVC's way."""
    (tmp_path / "data").symlink_to(data_dir)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reglab",
            "train",
            "-m",
            "variant=baseline,l2",
            *DIGITS,
            "train.epochs=1",
            "tracking.log_model=false",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    client = store(tmp_path)
    experiment = client.get_experiment_by_name("reglab")
    runs = client.search_runs([experiment.experiment_id], "tags.variant != ''")
    assert sorted(r.info.run_name for r in runs) == ["baseline@42", "l2@42"]
    assert all(r.info.status == "FINISHED" for r in runs)
    # Logged in the background, all in the store when the process has ended (MLflow's
    # own exit callbacks drain its queue).
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "val/data_loss")] == [1]
        assert r.data.metrics["epochs_trained"] == 1
    assert not (tmp_path / "models").exists()  # the pipeline's outputs are untouched
    saved = sorted(p.parent.name for p in (tmp_path / "multirun").rglob("model.keras"))
    assert saved == ["baseline@42", "l2@42"]


def test_command_line_rejects_a_bad_override_in_one_line(tmp_path):
    # `python -m reglab train ...`, noting as it ends whether TensorFlow was ever imported.
    loaded = tmp_path.parent / f"{tmp_path.name}-heavy-modules.txt"
    main = (
        "import runpy, sys\n"
        "out = sys.argv.pop()\n"
        "sys.argv = ['reglab'] + sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module('reglab', run_name='__main__')\n"
        "finally:\n"
        "    heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "    open(out, 'w').write(' '.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", main, "train", "variant=l2", "variants.l2.kernel.l2=-1", loaded],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: variants.l2.kernel.l2=-1.0: must be >= 0"]
    assert not (tmp_path / "mlflow.db").exists()
    assert not (tmp_path / "outputs").exists()  # no empty Hydra folder for a run that never began
    assert loaded.read_text() == ""  # refused before TensorFlow or Keras was imported


def test_a_damaged_tracking_store_is_one_line_naming_the_file(project):
    (project / "mlflow.db").write_bytes(b"not a database" * 100)
    with pytest.raises(TrackingUnavailable) as damaged:
        train_variant(config_for(), "baseline@42")
    store_file = (project / "mlflow.db").resolve()
    assert str(damaged.value) == (
        f"{store_file}: the MLflow store is damaged (file is not a database); move it aside "
        f"(`mv {store_file} {store_file}.damaged`) and run again: a fresh store is created"
    )


def test_a_store_left_mid_transaction_by_a_killed_writer_is_not_called_damaged(tmp_path):
    """SIGKILL during a write leaves a hot journal: the store is rolled back, not refused."""
    store_file = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(store_file)) as store:
        store.execute("CREATE TABLE t (x BLOB)")
        store.executemany("INSERT INTO t VALUES (?)", [(os.urandom(1000),) for _ in range(3000)])
        store.commit()
    writer = (
        "import sqlite3, sys, time\n"
        f"store = sqlite3.connect({str(store_file)!r}, isolation_level=None)\n"
        "store.execute('PRAGMA cache_size=10')\n"  # spill pages, so the journal is hot
        "store.execute('BEGIN IMMEDIATE')\n"
        "store.execute('UPDATE t SET x = randomblob(1000)')\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert (tmp_path / "mlflow.db-journal").stat().st_size > 0
    check_sqlite_store(f"sqlite:///{store_file}")
    assert not (tmp_path / "mlflow.db-journal").exists()  # rolled back
    with contextlib.closing(sqlite3.connect(store_file)) as store:
        assert store.execute("SELECT count(*) FROM t").fetchone() == (3000,)


def test_a_trained_model_tested_again_alone_reports_what_the_train_stage_did(project):
    from reglab.train.run import evaluate_run, train_and_evaluate

    config = config_for("train.epochs=2")
    train_and_evaluate(config, "dropout@42")
    outputs = ["reports/eval/dropout@42.json", "reports/weights/dropout@42.json"]
    first = [(project / name).read_text() for name in outputs]
    keras.backend.clear_session()
    evaluate_run(config, "dropout@42")  # again, alone, after everything
    assert [(project / name).read_text() for name in outputs] == first
    report = json.loads(first[0])
    run = store(project).get_run(
        json.loads((project / ".reglab/runs/dropout@42.json").read_text())["mlflow_run_id"]
    )
    assert run.data.metrics["test/accuracy"] == pytest.approx(report["test_accuracy"])
    assert run.data.metrics["epochs_trained"] == 2  # the run's own last logging


def test_a_run_failing_in_its_last_logging_raises_its_own_error_and_reports_no_test(
    project, monkeypatch
):
    from reglab.core.errors import ReglabError
    from reglab.train import run as runner

    def lost(*args, **kwargs):
        raise ReglabError("the tracking server did not answer")

    monkeypatch.setattr(runner, "finish_logging", lost)
    with pytest.raises(ReglabError, match="the tracking server did not answer"):
        runner.train_and_evaluate(config_for("train.epochs=1"), "baseline@42")
    assert (project / "models/baseline@42/model.keras").exists()  # trained and written
    assert not (project / "reports/eval").exists()
