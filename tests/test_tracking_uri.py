"""Which tracking store a run logs to, when one process configures several (a multirun)."""

from __future__ import annotations

import os

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


HTTP_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def test_each_job_waits_for_a_server_as_its_own_config_says(monkeypatch):
    """`tracking.server_wait_s` sets MLflow's HTTP retries per job, not once per process;
    a retry setting the user made wins in every job."""
    from reglab.tracking import store

    for name in HTTP_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(store, "_bounded", {})

    def settings() -> tuple[str | None, ...]:
        return tuple(os.environ.get(name) for name in HTTP_SETTINGS)

    store.bound_server_wait(4)
    assert settings() == ("1", "2", "4")  # one retry after 2 s
    store.bound_server_wait(90)
    assert settings() == ("5", "2", "10")  # 2 + 4 + 8 + 16 + 32 s
    store.bound_server_wait(4)
    assert settings() == ("1", "2", "4")

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    store.bound_server_wait(90)
    assert settings() == ("7", "2", "10")
