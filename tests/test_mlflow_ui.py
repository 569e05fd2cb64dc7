"""What a user sees in MLflow's UI: the experiment opens on its runs, the pipeline's
parent run spans its children. The browser test starts a real `mlflow server` on
127.0.0.1 and looks at it with headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from reglab import tracking
from reglab.core.net import free_port
from tests.browser import chromium

# The full tier: MLflow runs and its UI in headless Chromium.
pytestmark = pytest.mark.slow


def pipeline_with_two_variants(uri: str) -> tuple[str, list[str]]:
    tracking.configure(uri, "reglab")
    tags = {"dataset": "digits", "git_commit": "abc"}
    parent = tracking.pipeline_parent("reglab", "key", tags)
    children = []
    for name in ("baseline@42", "l2@42"):
        time.sleep(0.02)
        with tracking.variant_run(name, {**tags, "variant": name}, parent) as run:
            mlflow.log_metric("val/data_loss", 0.5, step=1)
            time.sleep(0.02)
        children.append(run.info.run_id)
    time.sleep(0.02)
    with tracking.resumed_run(uri, children[0]):  # evaluate logs into the first one later
        mlflow.log_metric("test/accuracy", 0.9)
    return parent, children


def test_the_parent_run_spans_its_children_and_the_experiment_is_model_training(tracking_uri):
    parent_id, child_ids = pipeline_with_two_variants(tracking_uri)
    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id).info
    children = [client.get_run(run_id).info for run_id in child_ids]
    assert parent.status == "FINISHED"
    assert parent.start_time <= min(child.start_time for child in children)
    assert parent.end_time >= max(child.end_time for child in children)
    assert parent.end_time - parent.start_time >= 60  # ms: no longer a few milliseconds
    experiment = client.get_experiment_by_name("reglab")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_kind_chosen_in_the_ui_is_kept(tracking_uri):
    experiment_id = mlflow.create_experiment(
        "reglab", tags={"mlflow.experimentKind": "genai_development"}
    )
    tracking.configure(tracking_uri, "reglab")
    tags = mlflow.MlflowClient().get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "genai_development"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_the_ui_opens_the_experiment_on_its_runs(tmp_path, tracking_uri):
    parent_id, child_ids = pipeline_with_two_variants(tracking_uri)
    experiment_id = mlflow.get_experiment_by_name("reglab").experiment_id
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        # The UI's GenAI/model-training switch is per browser; the README's link sets it.
        view = "?workflowType=machine_learning"
        page = f"{base}/#/experiments/{experiment_id}{view}"
        run_page = f"{base}/#/experiments/{experiment_id}/runs/{child_ids[1]}/model-metrics{view}"
        # The variant's metric charts as a picture (REGLAB_SCREENSHOTS=<folder> keeps it,
        # with one of the experiment page); the experiment page is checked by its DOM.
        shots = Path(os.environ.get("REGLAB_SCREENSHOTS", tmp_path))
        shots.mkdir(parents=True, exist_ok=True)
        pages = [("metrics", run_page)]
        if "REGLAB_SCREENSHOTS" in os.environ:
            pages.append(("experiment", page))
        for name, url in pages:
            chromium(f"--screenshot={shots / name}.png", "--window-size=1400,900", url)
            assert (shots / f"{name}.png").stat().st_size > 10_000
        dom = chromium("--dump-dom", page)
        # The runs table with the pipeline parent, not the GenAI overview.
        assert "pipeline" in dom and "matching runs" in dom, dom[-2000:]
        assert "Detect Issues" not in dom
    finally:
        server.terminate()
        server.wait(timeout=30)
