"""Which tracking store a run logs to, when one process configures several (a multirun)."""

from __future__ import annotations

import mlflow

from reglab.tracking import configure


def test_each_job_logs_to_its_own_configured_store(tmp_path, monkeypatch):
    """MLflow writes the first job's URI to MLFLOW_TRACKING_URI; the second job's config
    still decides where the second job logs (`reglab train -m tracking.uri=A,B`)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    first, second = (tmp_path / "first").as_uri(), (tmp_path / "second").as_uri()
    assert configure(first) == first
    assert mlflow.get_tracking_uri() == first
    assert configure(second) == second
    assert mlflow.get_tracking_uri() == second
    assert configure(first) == first


def test_the_users_mlflow_tracking_uri_wins_in_every_job(tmp_path, monkeypatch):
    chosen = (tmp_path / "chosen").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    for configured in ((tmp_path / "first").as_uri(), (tmp_path / "second").as_uri()):
        assert configure(configured) == chosen
        assert mlflow.get_tracking_uri() == chosen
