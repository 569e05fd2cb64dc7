"""A variant's run is made and started by its id: under `mlflow run` it nests in the
launcher's run and experiment, and the environment MLflow's launcher set is left alone."""

from __future__ import annotations

import os

import mlflow
import pytest

from reglab import tracking


def test_a_run_under_the_launcher_of_mlflow_run_nests_in_its_experiment(tracking_uri, monkeypatch):
    client = mlflow.MlflowClient(tracking_uri)
    launcher_experiment = client.create_experiment("adhoc")
    launcher = client.create_run(launcher_experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)  # as `mlflow run` starts its command
    tracking.configure(tracking_uri, "reglab")  # the project's experiment is the active one
    tags = {"variant": "l2", "seed": "42", "mlflow.parentRunId": launcher}  # reglab.stages.run_tags
    parent = tracking.pipeline_parent("reglab", "key", tags)
    assert parent == launcher
    with tracking.variant_run("l2@42", tags, parent) as run:
        assert os.environ["MLFLOW_RUN_ID"] == launcher  # not taken out of the environment
        mlflow.log_metric("val/data_loss", 0.5, step=1)
    made = client.get_run(run.info.run_id)
    assert made.info.experiment_id == launcher_experiment
    assert made.data.tags["mlflow.parentRunId"] == launcher
    assert made.data.tags["mlflow.runName"] == "l2@42" and made.data.tags["variant"] == "l2"
    assert "mlflow.user" in made.data.tags  # the tags MLflow's run API gives a run
    assert made.info.status == "FINISHED"
    assert made.data.metrics["val/data_loss"] == 0.5
    assert client.get_run(launcher).info.status == "RUNNING"  # the launcher ends its own run
    # Evaluate logs into it later, and an interrupted training resumes it, whichever
    # experiment is active then.
    tracking.configure(tracking_uri, "reglab")
    with tracking.resumed_run(tracking_uri, run.info.run_id):
        mlflow.log_metric("test/accuracy", 0.9)
    with tracking.variant_run("l2@42", tags, parent, run_id=run.info.run_id) as again:
        assert again.info.run_id == run.info.run_id
    resumed = client.get_run(run.info.run_id)
    assert resumed.data.metrics["test/accuracy"] == 0.9 and resumed.info.status == "FINISHED"
    assert len(client.search_runs([launcher_experiment])) == 2  # the launcher's and this one


def test_a_run_that_lost_its_server_ends_so_the_process_can_start_another(tracking_uri):
    tracking.configure(tracking_uri, "reglab")
    parent = tracking.pipeline_parent("reglab", "key", {})
    with pytest.raises(tracking.TrackingLost), tracking.variant_run("a@1", {}, parent):
        raise tracking.TrackingLost("the tracking server stopped answering")
    assert mlflow.active_run() is None
    with tracking.variant_run("b@1", {}, parent) as run:
        pass
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"
