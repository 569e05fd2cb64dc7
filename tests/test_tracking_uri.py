"""Which tracking store a run logs to and how long it waits for a server, when one
process configures several (a multirun); the user's environment wins."""

from __future__ import annotations

import os

import mlflow
import pytest

from reglab.config.tracking import server_wait_settings
from reglab.stages import mlflow_settings, run_tags, with_user_tracking
from reglab.tracking import configure
from reglab.tracking.store import resolve_uri, sqlite_path
from tests.conftest import config_for


@pytest.mark.slow
def test_each_job_logs_to_its_own_configured_store(tmp_path, monkeypatch):
    """MLflow writes the first job's URI to MLFLOW_TRACKING_URI; the second job's config
    still decides where the second job logs (`reglab train -m tracking.uri=A,B`)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    user = mlflow_settings()  # as the command line reads them, before the first job
    first, second = f"sqlite:///{tmp_path / 'first.db'}", f"sqlite:///{tmp_path / 'second.db'}"
    for configured in (first, second, first):
        config = with_user_tracking(config_for(f"tracking.uri={configured}"), user)
        assert configure(config.tracking.uri) == configured
        assert mlflow.get_tracking_uri() == configured
    assert os.environ["MLFLOW_TRACKING_URI"] == first  # MLflow's export, not read back


@pytest.mark.slow
def test_the_users_mlflow_tracking_uri_wins_in_every_job(tmp_path, monkeypatch):
    chosen = f"sqlite:///{tmp_path / 'chosen.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chosen)
    user = mlflow_settings()
    for configured in (f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"):
        config = with_user_tracking(config_for(f"tracking.uri={configured}"), user)
        assert config.tracking.uri == chosen
        assert configure(config.tracking.uri) == chosen
        assert mlflow.get_tracking_uri() == chosen


def test_configure_reads_no_environment(tmp_path, monkeypatch):
    """The library logs where it is told; the entry layer is the one to read the user's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    told = f"sqlite:///{tmp_path / 'told.db'}"
    assert configure(told) == told
    assert mlflow.get_tracking_uri() == told


HTTP_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


def test_the_server_wait_is_a_bounded_retry():
    assert server_wait_settings(4) == dict(zip(HTTP_SETTINGS, ("1", "2", "4"), strict=True))
    # 2 + 4 + 8 + 16 + 32 s of backoff; no request waits more than 10 s for its answer.
    assert server_wait_settings(90) == dict(zip(HTTP_SETTINGS, ("5", "2", "10"), strict=True))


@pytest.mark.slow
def test_each_job_waits_for_a_server_as_its_own_config_says():
    """`tracking.server_wait_s` sets MLflow's HTTP retries per job, not once per process;
    a retry setting the user made wins in every job; a local store sets nothing."""
    environ: dict[str, str] = {}

    def job(wait_s: int, user: dict[str, str], uri: str = "http://127.0.0.1:5000") -> tuple:
        config = config_for(f"tracking.uri={uri}", f"tracking.server_wait_s={wait_s}")
        with_user_tracking(config, user, environ)
        return tuple(environ.get(name) for name in HTTP_SETTINGS)

    assert job(4, {}) == ("1", "2", "4")  # one retry after 2 s
    assert job(90, {}) == ("5", "2", "10")
    assert job(4, {}) == ("1", "2", "4")
    environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "7"
    assert job(90, {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "7"}) == ("7", "2", "10")
    environ.clear()
    assert job(4, {}, uri="sqlite:///mlflow.db") == (None, None, None)
    # The user's server URI is the one that counts.
    assert job(4, {"MLFLOW_TRACKING_URI": "http://team:5000"}, uri="sqlite:///x.db")[0] == "1"


def test_the_launcher_of_mlflow_run_is_every_runs_parent(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    assert run_tags() == {}
    monkeypatch.setenv("MLFLOW_RUN_ID", "launcher")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    assert run_tags() == {"dvc_experiment": "exp-1", "mlflow.parentRunId": "launcher"}


def test_one_sqlite_parser(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///mlflow.db") == sqlite_path("sqlite:///mlflow.db?timeout=5")
    assert sqlite_path("sqlite:///mlflow.db") == type(tmp_path)("mlflow.db")
    assert sqlite_path("sqlite:////abs/store.db") == type(tmp_path)("/abs/store.db")
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://u@h/db") is None
    assert sqlite_path("http://127.0.0.1:5000") is None
    resolved = tmp_path.resolve() / "mlflow.db"
    assert resolve_uri("sqlite:///mlflow.db") == f"sqlite:///{resolved}"
    assert resolve_uri("sqlite:///mlflow.db?timeout=5") == f"sqlite:///{resolved}?timeout=5"
    assert resolve_uri("sqlite:////abs/store.db") == "sqlite:////abs/store.db"
    assert resolve_uri("http://h:5000") == "http://h:5000"
