"""Where runs are tracked: the tracking URI, the store's health, a server's bounded wait."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from reglab.core import digest
from reglab.core.errors import ReglabError
from reglab.tracking import secrets

log = logging.getLogger(__name__)


# ``mlflow.set_tracking_uri`` also writes its URI to MLFLOW_TRACKING_URI (for
# subprocesses). What configure() left there, and what the variable held before:
# a later job in the same process (a multirun over tracking.uri) must read the
# user's setting, not the store an earlier job logged to.
_exported: tuple[str | None, str | None] = (None, None)


def user_tracking_uri() -> str | None:
    """MLFLOW_TRACKING_URI as the user set it (None if unset), not as MLflow rewrote it."""
    current = os.environ.get("MLFLOW_TRACKING_URI")
    exported, before = _exported
    return before if exported is not None and current == exported else current


def resolve_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI in the environment wins over the config.

    A relative sqlite path is made absolute: the run records where its store
    really is, and MLflow (which caches stores by URI) never mixes up two
    projects' ``sqlite:///mlflow.db`` in one process.
    """
    uri = user_tracking_uri() or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


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
    prefix = "sqlite:///"
    path = Path(uri[len(prefix) :]) if uri.startswith(prefix) else None
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


# The HTTP settings bound_server_wait() wrote: a later job in the same process (a
# multirun, a test) gets its own wait, while a setting the user made still wins.
_bounded: dict[str, str] = {}


def bound_server_wait(wait_s: float) -> None:
    """MLflow's HTTP retries, bounded to about ``wait_s`` seconds (its defaults: minutes).

    urllib3 sleeps backoff * 2**(n - 1) before the n-th retry; with backoff 2 the
    retries fit in 2 * (2**retries - 1) seconds. Settings the user made win.
    """
    retries = 1
    while 2 * (2 ** (retries + 1) - 1) <= wait_s:
        retries += 1
    wanted = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, min(10, int(wait_s)))),
    }
    for name, value in wanted.items():
        if os.environ.get(name) in (None, _bounded.get(name)):
            os.environ[name] = _bounded[name] = value


@contextlib.contextmanager
def lost_server_is(message: str) -> Iterator[None]:
    """Turn an error while the tracking server does not answer (after the bounded
    retries) into TrackingLost with ``message``; other errors pass unchanged."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (requests.RequestException, ConnectionError, MlflowException) as error:
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
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.endswith(":memory:"):
        return
    import fcntl

    database = Path(uri[len(prefix) :].split("?")[0])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def configure(uri: str, experiment: str | None = None, server_wait_s: float = 30.0) -> str:
    """Point MLflow at the tracking store (and experiment); returns the URI in use."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        bound_server_wait(server_wait_s)
    secrets.install_log_filter()
    check_reachable(uri)
    check_sqlite_store(uri)
    initialize_sqlite_store(uri)
    global _exported
    before = user_tracking_uri()
    mlflow.set_tracking_uri(uri)
    _exported = (os.environ.get("MLFLOW_TRACKING_URI"), before)
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        # Under `mlflow run`: nest in the launcher's experiment, where its run is.
        experiment_id = mlflow.MlflowClient().get_run(launcher).info.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
    elif experiment:
        mark_model_training(mlflow.set_experiment(experiment))
    return uri


# MLflow 3's UI files an experiment without this tag under GenAI (traces, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def mark_model_training(experiment: Any) -> None:
    """Tag the experiment as model training, so MLflow's UI opens it on its runs.

    The tag decides the experiment's kind and its runs tab; the UI's GenAI/model
    training switch is also a per-browser setting that the URL parameter
    ``?workflowType=machine_learning`` sets (see the README). A kind a user chose
    in the UI is kept.
    """
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )


def flatten(params: Mapping[str, Any]) -> dict[str, str]:
    """Nested config -> MLflow params ``{"a.b.c": "value"}``, secrets masked."""
    return {name: secrets.redact(str(value)) for name, value in digest.flatten(params).items()}
