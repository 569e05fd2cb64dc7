"""MLflow run lifecycle: tracking URI, experiment, run start/resume, params, artifacts."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from reglab import secrets
from reglab.errors import ReglabError

log = logging.getLogger(__name__)


def resolve_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI in the environment wins over the config.

    A relative sqlite path is made absolute: the run records where its store
    really is, and MLflow (which caches stores by URI) never mixes up two
    projects' ``sqlite:///mlflow.db`` in one process.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
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


def configure(uri: str, experiment: str | None = None) -> str:
    """Point MLflow at the tracking store (and experiment); returns the URI in use."""
    uri = resolve_uri(uri)
    secrets.install_log_filter()
    check_reachable(uri)
    initialize_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        # Under `mlflow run`: nest in the launcher's experiment, where its run is.
        experiment_id = mlflow.MlflowClient().get_run(launcher).info.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
    elif experiment:
        mlflow.set_experiment(experiment)
    return uri


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; lists become their string form; secrets masked."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = secrets.redact(str(value))
    return flat


PIPELINE_TAG = "reglab.pipeline"


def pipeline_parent(experiment_name: str, key: str, name: str, tags: Mapping[str, str]) -> str:
    """The parent run that groups one pipeline's variants in the UI; made once per key.

    Under `mlflow run`, the launcher's run (MLFLOW_RUN_ID) is the parent instead.
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_RUN_ID"]
    return _find_or_make_parent(experiment_name, key, name, tags)


def _find_or_make_parent(experiment_name: str, key: str, name: str, tags: Mapping[str, str]) -> str:
    """The parent run that groups one pipeline's variants in the UI; made once per key.

    The key hashes what the variants share (data, model, training, seed, code);
    a variant re-trained under the same key joins the same parent, so the
    group stays one pipeline, with the variant's older run kept beside it.
    """
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return found[0].info.run_id
    parent = client.create_run(
        experiment.experiment_id, run_name=name, tags={**tags, PIPELINE_TAG: key}
    )
    client.set_terminated(parent.info.run_id, "FINISHED")
    # Variants started at the same moment may each have made a parent: all of
    # them keep the oldest, and each deletes its own if it is not that one.
    made = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'"
    )
    oldest = min(made, key=lambda run: (run.info.start_time, run.info.run_id))
    if oldest.info.run_id != parent.info.run_id:
        client.delete_run(parent.info.run_id)
    return oldest.info.run_id


def start_variant_run(
    name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    log_system_metrics: bool = False,
    run_id: str | None = None,
) -> contextlib.AbstractContextManager[mlflow.ActiveRun]:
    """A run for one variant, nested under its pipeline's parent run.

    Under `mlflow run`, MLFLOW_RUN_ID names the launcher's run; that run is the
    parent instead (otherwise every variant would log into that one run).
    ``run_id`` reopens an interrupted run of the same variant to resume it.
    """
    tags = dict(tags)
    parent_run_id = os.environ.pop("MLFLOW_RUN_ID", None) or parent_run_id
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if run_id:
        active = mlflow.start_run(run_id=run_id, log_system_metrics=log_system_metrics)
        mlflow.set_tags(tags)
    else:
        active = mlflow.start_run(run_name=name, tags=tags, log_system_metrics=log_system_metrics)
    return ending_run(active)


@contextlib.contextmanager
def ending_run(active: mlflow.ActiveRun) -> Iterator[mlflow.ActiveRun]:
    """End the run FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM."""
    import signal

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def resumed_run(uri: str, run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Log into an existing run (e.g. evaluate adding test metrics to the train run).

    The run keeps the status it had: a finished run stays FINISHED, and a failure
    while resumed marks it FAILED so the UI never shows a half-logged run as fine.
    """
    configure(uri)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def log_text_artifact(text: str, artifact_file: str) -> None:
    mlflow.log_text(secrets.redact(text), artifact_file)


def log_figure(figure: Any, artifact_file: str) -> None:
    mlflow.log_figure(figure, artifact_file)


def log_dir(path: Path, artifact_path: str | None = None) -> None:
    mlflow.log_artifacts(str(path), artifact_path)


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="reglab-") as tmp:
        yield Path(tmp)


# Per-epoch history keys -> MLflow metric names.
EPOCH_METRICS = {
    "train_data_loss": "train/data_loss",
    "train_penalty": "train/penalty",
    "train_total_loss": "train/total_loss",
    "train_accuracy": "train/accuracy",
    "penalty_share": "train/penalty_share",
    "val_data_loss": "val/data_loss",
    "val_total_loss": "val/total_loss",
    "val_accuracy": "val/accuracy",
    "val_penalty": "val/penalty",
    "val_penalty_share": "val/penalty_share",
    "fit_total_loss": "train/fit_total_loss",
    "fit_data_loss": "train/fit_data_loss",
    "fit_accuracy": "train/fit_accuracy",
}


def epoch_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    return {
        name: float(logs[key]) for key, name in EPOCH_METRICS.items() if logs.get(key) is not None
    }


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Asynchronous: training does not wait for the tracking store."""
    mlflow.log_metrics(dict(metrics), step=step, synchronous=False)


def flush() -> None:
    """Wait for asynchronous logging to land (before a run ends)."""
    mlflow.flush_async_logging()


class _KerasFlavor:
    """mlflow.keras whose save_model makes the model folder first.

    MLflow 3.17's Keras flavor writes the input example before it creates the
    folder, so ``input_example=`` fails with FileNotFoundError; creating the
    (empty) folder first is all the flavor needs.
    """

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> Any:
        os.makedirs(path, exist_ok=True)
        return mlflow.keras.save_model(path=path, **kwargs)


def log_keras_model(
    model: Any, example_inputs: Any, registered_model_name: str | None = None
) -> str:
    """Log with MLflow's Keras flavor, with a signature and an input example.

    Pip requirements are given explicitly: inferring them costs seconds per model.
    """
    import keras
    import tensorflow as tf
    from mlflow.models import Model, infer_signature

    signature = infer_signature(example_inputs, model.predict(example_inputs, verbose=0))
    info = Model.log(
        artifact_path=None,
        name="model",
        flavor=_KerasFlavor,
        model=model,
        signature=signature,
        input_example=example_inputs,
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        registered_model_name=registered_model_name,
    )
    return info.model_uri


def git_state(directory: str | Path = ".") -> dict[str, str]:
    """The commit the code ran from and whether the tree had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}


def installed_packages() -> str:
    """`pip freeze` of the running environment: what a re-run must install.

    The project itself is left out: it comes from the git commit, not an index.
    """
    from importlib import metadata

    lines = {
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "reglab"
    }
    return "\n".join(sorted(lines, key=str.lower)) + "\n"
