"""Where runs are tracked: the tracking URI, the store's health, a server's bounded wait.

Nothing here reads or writes the process's environment. The entry layer
(:mod:`reglab.stages`) puts the user's MLFLOW_TRACKING_URI in ``tracking.uri``
and sets MLflow's HTTP retry variables from :func:`server_wait_settings`;
``mlflow.set_tracking_uri`` (in :func:`configure`) exports its URI for
subprocesses, as MLflow does.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from reglab.config.tracking import request_timeout_s
from reglab.core import digest
from reglab.core.errors import ReglabError
from reglab.tracking import secrets

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (as written: relative or absolute, no
    query string); None for any other store and for an in-memory database."""
    if not uri.startswith(SQLITE_PREFIX):
        return None
    path = uri[len(SQLITE_PREFIX) :].partition("?")[0]
    return Path(path) if path and path != ":memory:" else None


def resolve_uri(uri: str) -> str:
    """``uri`` with a relative sqlite path made absolute.

    The run records where its store really is, and MLflow (which caches stores by
    URI) never mixes up two projects' ``sqlite:///mlflow.db`` in one process.
    """
    path = sqlite_path(uri)
    if path is None or path.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return SQLITE_PREFIX + str(path.resolve()) + (f"?{query}" if query else "")


class TrackingUnavailable(ReglabError):
    """The tracking server does not answer."""


def check_reachable(uri: str, timeout_s: float = 8.0) -> None:
    """Fail fast on an HTTP tracking server that does not answer.

    MLflow's own client retries for minutes; a user with a typo in the URI or a
    stopped server should hear about it within seconds, before any epoch.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as error:
        reason = type(error).__name__
        raise TrackingUnavailable(
            f"MLflow tracking server {secrets.redact(uri)} is unreachable ({reason}); start it, "
            "or point MLFLOW_TRACKING_URI (or tracking.uri) at a running one"
        ) from None


def check_sqlite_store(uri: str) -> None:
    """A damaged sqlite store is one line naming the file, not SQLAlchemy's traceback."""
    path = sqlite_path(uri)
    if path is None or not path.exists():
        return  # MLflow creates a new store
    import sqlite3

    # Read-write on purpose: a writer killed mid-transaction leaves a hot journal,
    # which sqlite rolls back on the next read-write open; read-only it cannot, and
    # an intact store would look damaged ("attempt to write a readonly database").
    try:
        with contextlib.closing(sqlite3.connect(path)) as store:
            store.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as error:
        raise TrackingUnavailable(
            f"{path}: the MLflow store is damaged ({error}); move it aside "
            f"(`mv {path} {path}.damaged`) and run again: a fresh store is created"
        ) from None


class TrackingLost(ReglabError):
    """The tracking server stopped answering while a run was being logged."""


def server_errors() -> tuple[type[Exception], ...]:
    """What a request to a tracking server that does not answer raises, past MLflow's retries."""
    import requests

    return requests.RequestException, ConnectionError, mlflow.exceptions.MlflowException


@contextlib.contextmanager
def lost_server_is(message: str) -> Iterator[None]:
    """Turn an error while the tracking server does not answer (after the bounded
    retries) into TrackingLost with ``message``; other errors pass unchanged."""
    try:
        yield
    except server_errors() as error:
        uri = mlflow.get_tracking_uri()
        try:
            check_reachable(uri, timeout_s=2.0)
        except TrackingUnavailable:
            raise TrackingLost(message) from None
        raise error


def initialize_sqlite_store(uri: str) -> None:
    """Create (or upgrade) a sqlite store's tables under an exclusive file lock.

    MLflow creates the tables, running every migration, the first time a process
    opens a store. Trainings started at once on a fresh ``mlflow.db`` (a multirun,
    the trials of a search, a parallel ``dvc exp`` queue) would run the
    migrations together and fail ("duplicate column name"); one at a time, the
    first creates the tables and the others find them made. Writes after that
    are short transactions that SQLite serializes by itself.
    """
    database = sqlite_path(uri)
    if database is None:
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def check_store(uri: str, server_wait_s: float = 30.0) -> None:
    """The store at ``uri`` is ready: a server answers, a sqlite file is sound and has
    its tables; log lines are masked from here on."""
    secrets.install_log_filter()
    check_reachable(uri, timeout_s=request_timeout_s(server_wait_s))
    check_sqlite_store(uri)
    initialize_sqlite_store(uri)


def ensure_experiment(client: mlflow.MlflowClient, name: str) -> str:
    """The id of experiment ``name``, made (and marked as model training) if it is new."""
    found = client.get_experiment_by_name(name)
    if found is None:
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # made at the same moment
            client.create_experiment(name)
        found = client.get_experiment_by_name(name)
    mark_model_training(found, client)
    return found.experiment_id


def configure(uri: str, experiment: str | None = None, server_wait_s: float = 30.0) -> str:
    """Point MLflow's run API at the tracking store (and experiment); returns the URI in use.

    ``uri`` is the store to use: the entry layer has put the user's MLFLOW_TRACKING_URI
    there. ``server_wait_s`` bounds the health check as it bounds every request (the
    entry layer sets MLflow's retries from it). A run nested under a run of another
    experiment (``mlflow run``'s launcher) goes to that one's experiment
    (:func:`reglab.tracking.runs.variant_run`).
    """
    uri = resolve_uri(uri)
    check_store(uri, server_wait_s)
    mlflow.set_tracking_uri(uri)
    if experiment:
        experiment_id = ensure_experiment(mlflow.MlflowClient(uri), experiment)
        mlflow.set_experiment(experiment_id=experiment_id)
    return uri


# MLflow 3's UI files an experiment without this tag under GenAI (traces, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def mark_model_training(experiment: Any, client: mlflow.MlflowClient | None = None) -> None:
    """Tag the experiment as model training, so MLflow's UI opens it on its runs.

    The tag decides the experiment's kind and its runs tab; the UI's GenAI/model
    training switch is also a per-browser setting that the URL parameter
    ``?workflowType=machine_learning`` sets (see the README). A kind a user chose
    in the UI is kept.
    """
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        (client or mlflow.MlflowClient()).set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )


def flatten(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> MLflow params ``{"a.b.c": "value"}``, secrets masked."""
    return {name: secrets.redact(str(value)) for name, value in digest.flatten(params).items()}
