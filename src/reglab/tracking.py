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

log = logging.getLogger(__name__)


def resolve_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI in the environment wins over the config."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


def configure(uri: str, experiment: str | None = None) -> str:
    """Point MLflow at the tracking store (and experiment); returns the URI in use."""
    uri = resolve_uri(uri)
    mlflow.set_tracking_uri(uri)
    if experiment:
        mlflow.set_experiment(experiment)
    return uri


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; lists become their string form."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = str(value)
    return flat


def start_variant_run(name: str, tags: Mapping[str, str]) -> mlflow.ActiveRun:
    """A new run for one variant.

    Under `mlflow run`, MLFLOW_RUN_ID names the launcher's run; the variant's run
    is nested under it (instead of every variant logging into that one run).
    """
    tags = dict(tags)
    parent = os.environ.pop("MLFLOW_RUN_ID", None)
    if parent:
        tags["mlflow.parentRunId"] = parent
    return mlflow.start_run(run_name=name, tags=tags)


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
    mlflow.log_text(text, artifact_file)


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


def log_keras_model(
    model: Any, example_inputs: Any, registered_model_name: str | None = None
) -> str:
    """Log with MLflow's Keras flavor, with a signature; returns the model URI.

    Pip requirements are given explicitly: inferring them costs seconds per model.
    """
    import keras
    import tensorflow as tf
    from mlflow.models import infer_signature

    signature = infer_signature(example_inputs, model.predict(example_inputs, verbose=0))
    info = mlflow.keras.log_model(
        model,
        name="model",
        signature=signature,
        pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        registered_model_name=registered_model_name,
    )
    return info.model_uri
