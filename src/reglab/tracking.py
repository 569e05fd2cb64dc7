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
