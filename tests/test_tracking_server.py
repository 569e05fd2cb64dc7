"""A real `mlflow server` on 127.0.0.1: training logs to it over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from reglab.core.net import free_port
from tests.conftest import config_for, served_inputs

pytestmark = pytest.mark.slow


def start_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port with its stores in ``root``; waits until it answers."""
    root.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'backend.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log_file = (root / "server.log").open("a")
    # Its own process group: `mlflow server` runs its workers as children.
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.5)
    stop_server(process)
    pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text())


def stop_server(process: subprocess.Popen) -> None:
    """Kill the server and its workers (the whole process group), at once."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = start_server(root, port)
    yield f"http://127.0.0.1:{port}", root
    stop_server(process)


def test_training_logs_metrics_images_and_model_to_a_real_server(
    server, data_dir, tmp_path, monkeypatch
):
    import mlflow
    from mlflow import MlflowClient

    from reglab.train.run import train_variant

    uri, root = server
    (tmp_path / "data").symlink_to(data_dir)
    monkeypatch.chdir(tmp_path)
    # System metrics every second, so a short run still records some.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    summary = train_variant(
        config_for(
            f"tracking.uri={uri}",
            "tracking.log_model=true",
            "tracking.registered_model_name=reglab-digits",
            "tracking.system_metrics=true",
        ),
        "l2@42",
    )
    assert summary["tracking_uri"] == uri

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "l2@42"
    for key in ("train/data_loss", "train/penalty", "val/data_loss", "val/accuracy"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3]
        assert all(np.isfinite(m.value) for m in history)
    assert run.data.metrics["train/penalty"] > 0
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert images
    # The artifacts really went through the server into its artifact store.
    stored = [p for p in (root / "artifacts").rglob("*") if p.is_file()]
    assert any(p.name == "model_summary.txt" for p in stored)
    assert any(p.suffix == ".png" for p in stored)

    assert any(key.startswith("system/cpu_utilization") for key in run.data.metrics)
    assert any(key.startswith("system/system_memory_usage") for key in run.data.metrics)
    (version,) = client.search_model_versions("name = 'reglab-digits'")
    assert version.run_id == run.info.run_id

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    x = served_inputs(tmp_path / "data/processed")[:5]
    assert np.asarray(model.predict(x)).shape == (5, 10)
    assert not os.path.exists(tmp_path / "mlflow.db")  # nothing went to the local default


def log_to_a_server_from(project: Path, data_dir: Path, port: int, monkeypatch) -> str:
    """``project`` with the digits, as the working folder; the URI of a server on ``port``."""
    (project / "data").symlink_to(data_dir)
    monkeypatch.chdir(project)
    return f"http://127.0.0.1:{port}"


def as_a_stage_reads(monkeypatch, uri: str, *overrides: str):
    """The config logging to ``uri``, and MLflow's HTTP retries as the entry layer sets
    them for its `tracking.server_wait_s` (reglab.stages.with_user_tracking), for this
    test only."""
    from reglab.stages import with_user_tracking

    environ: dict[str, str] = {}
    config = with_user_tracking(config_for(f"tracking.uri={uri}", *overrides), {}, environ)
    assert set(environ) == {
        f"MLFLOW_HTTP_REQUEST_{name}" for name in ("MAX_RETRIES", "BACKOFF_FACTOR", "TIMEOUT")
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return config


def test_a_server_that_dies_during_training_loses_nothing(data_dir, tmp_path, monkeypatch):
    """Killed after epoch 2 of 4: training finishes, its outputs are written, the
    process says what was not logged; run again with the server back, the same
    run gets every epoch once and the model, without retraining."""
    import keras
    from mlflow import MlflowClient

    from reglab.tracking import TrackingLost
    from reglab.train.run import train_variant

    root, port = tmp_path / "server", free_port()
    uri = log_to_a_server_from(tmp_path, data_dir, port, monkeypatch)
    process = start_server(root, port)
    try:
        overrides = ["train.epochs=4", "tracking.server_wait_s=4", "tracking.log_model=true"]
        config = as_a_stage_reads(monkeypatch, uri, *overrides)

        def kill_server_after_epoch_2(epoch, row):
            if epoch == 2:
                stop_server(process)

        started = time.monotonic()
        with pytest.raises(TrackingLost) as lost:
            train_variant(config, "l2@42", hooks=[kill_server_after_epoch_2])
        elapsed = time.monotonic() - started
        assert str(lost.value).startswith(
            "l2@42 is trained and written to models/l2@42 and reports/history/l2@42.csv, "
            f"but the tracking server {uri} did not answer within 4 s:"
        )
        assert "run the same command again once the server is back" in str(lost.value)
        assert elapsed < 120, elapsed  # bounded: not MLflow's minutes of retries
        rows = (tmp_path / "reports/history/l2@42.csv").read_text().splitlines()
        assert len(rows) == 1 + 4
        assert (tmp_path / "models/l2@42/model.keras").is_file()
        state = json.loads((tmp_path / ".reglab/checkpoints/l2@42/state.json").read_text())
        assert state["epoch"] == 4

        process = start_server(root, port)  # back, with the same stores
        keras.backend.clear_session()
        summary = train_variant(config, "l2@42")
        assert summary["resumed_from_epoch"] == 4  # nothing retrained
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("reglab")
        (run,) = client.search_runs([experiment.experiment_id], "tags.variant = 'l2'")
        assert run.info.run_id == summary["mlflow_run_id"] == state["run_id"]
        assert run.info.status == "FINISHED"
        for key in ("val/data_loss", "train/penalty"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [1, 2, 3, 4], key  # each epoch once
        import mlflow

        mlflow.set_tracking_uri(uri)
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")  # logged by the re-run
        x = served_inputs(tmp_path / "data/processed")[:3]
        assert np.asarray(model.predict(x)).shape[0] == 3
        assert not (tmp_path / ".reglab/checkpoints/l2@42").exists()
    finally:
        stop_server(process)


def test_a_server_that_comes_back_within_the_wait_loses_and_repeats_nothing(
    data_dir, tmp_path, monkeypatch, caplog
):
    """Killed after epoch 1 of 3 and started again a moment later, within
    `tracking.server_wait_s`: the run goes on and finishes normally, every epoch
    logged once, no second run."""
    import threading

    from mlflow import MlflowClient

    from reglab.train.run import train_variant

    root, port = tmp_path / "server", free_port()
    uri = log_to_a_server_from(tmp_path, data_dir, port, monkeypatch)
    servers = [start_server(root, port)]
    restarted = threading.Thread(target=lambda: servers.append(start_server(root, port)))
    try:
        config = as_a_stage_reads(monkeypatch, uri, "train.epochs=3", "tracking.server_wait_s=90")

        def restart_server_after_epoch_1(epoch, row):
            if epoch == 1:
                stop_server(servers[0])
                restarted.start()  # the next epoch's metrics wait for it

        with caplog.at_level("WARNING", logger="reglab.train.run"):
            summary = train_variant(config, "l2@42", hooks=[restart_server_after_epoch_1])
        restarted.join()
        # Each epoch was logged as it ended: the run waited for the server, it did
        # not give it up and fill the epochs in at the end.
        assert "stopped answering" not in caplog.text
        assert servers[0].poll() is not None and servers[1].poll() is None  # it did go away
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("reglab")
        (run,) = client.search_runs([experiment.experiment_id], "tags.variant = 'l2'")
        assert run.info.run_id == summary["mlflow_run_id"]
        assert run.info.status == "FINISHED"
        assert summary["resumed_from_epoch"] == 0 and summary["epochs_trained"] == 3
        for key in ("val/data_loss", "train/penalty", "val/accuracy"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == [1, 2, 3], key  # each epoch once
        assert run.data.metrics["epochs_trained"] == 3
        assert not (tmp_path / ".reglab/checkpoints/l2@42").exists()
    finally:
        if restarted.is_alive():
            restarted.join()
        for process in servers:
            stop_server(process)
