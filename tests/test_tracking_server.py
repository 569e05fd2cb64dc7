"""A real `mlflow server` on 127.0.0.1: training logs to it over HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import config_for

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
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
    log_file = (root / "server.log").open("w")
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            assert process.poll() is None, (root / "server.log").read_text()
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not start:\n" + (root / "server.log").read_text())
    yield uri, root
    process.terminate()
    process.wait(timeout=30)


def test_training_logs_metrics_images_and_model_to_a_real_server(
    server, data_dir, tmp_path, monkeypatch
):
    import mlflow
    from mlflow import MlflowClient

    from reglab.runner import train_variant

    uri, root = server
    (tmp_path / "data").symlink_to(data_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # System metrics every second, so a short run still records some.
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    summary = train_variant(
        config_for(
            "tracking.log_model=true",
            "tracking.registered_model_name=reglab-digits",
            "tracking.system_metrics=true",
        ),
        "l2",
    )
    assert summary["tracking_uri"] == uri

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "l2"
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
    x = np.load(tmp_path / "data/processed/test_x.npy")[:5]
    assert np.asarray(model.predict(x)).shape == (5, 10)
    assert not os.path.exists(tmp_path / "mlflow.db")  # nothing went to the local default
