"""What evaluation and the comparison add: test metrics, confusion, the compare run."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from reglab.evaluate.evaluation import report_json
from reglab.evaluate.metrics import TEST_METRICS
from reglab.report.figures import confusion_figure
from reglab.tracking.runs import PARENT_TAG, resumed_run, span_parent
from reglab.tracking.store import configure

log = logging.getLogger(__name__)


def log_evaluation(
    uri: str,
    run_id: str,
    *,
    metrics: Mapping[str, float],
    report_text: str,
    confusion: Mapping[str, Any],
    figure: Any,
) -> None:
    """Add a variant's test metrics, its eval report and its confusion matrix (as JSON and
    as a figure) to the variant's training run, under ``evaluation/``."""
    with resumed_run(uri, run_id):
        mlflow.log_metrics(dict(metrics))
        mlflow.log_dict(dict(confusion), "evaluation/confusion_matrix.json")
        mlflow.log_text(report_text, "evaluation/report.json")
        mlflow.log_figure(figure, "evaluation/confusion_matrix.png")


def parent_of(run_ids: list[str]) -> str | None:
    """The parent run all of ``run_ids`` are nested under, if they share one."""
    client = mlflow.MlflowClient()
    parents = set()
    for run_id in run_ids:
        try:
            parents.add(client.get_run(run_id).data.tags.get("mlflow.parentRunId"))
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s not found in this store: no common parent run", run_id)
            return None
    return parents.pop() if len(parents) == 1 else None


def log_comparison(
    uri: str,
    experiment: str,
    *,
    run_ids: list[str],
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    summary: str,
    leaderboard: list[dict[str, Any]],
    figures: list[Path],
) -> str:
    """A run named "compare": metrics, summary.md, leaderboard.json and the figures.

    Nested under the parent of ``run_ids`` when they share one (the pipeline's run,
    or the launcher's of `mlflow run`, which ``tags`` may name too), in that run's
    experiment; otherwise in ``experiment``. The run is made here and started by its
    id, so a launcher's MLFLOW_RUN_ID is never resumed. Returns its run id."""
    from mlflow.tracking.context import registry

    configure(uri, experiment)
    client = mlflow.MlflowClient()
    tags = dict(tags)
    parent = parent_of(run_ids) if run_ids else None
    parent = parent or tags.get(PARENT_TAG)
    if parent:
        tags[PARENT_TAG] = parent
        experiment_id = client.get_run(parent).info.experiment_id
    else:
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
    made = client.create_run(experiment_id, run_name="compare", tags=registry.resolve_tags(tags))
    mlflow.set_experiment(experiment_id=experiment_id)
    with mlflow.start_run(run_id=made.info.run_id) as run:
        mlflow.log_metrics(dict(metrics))
        mlflow.log_text(summary, "summary.md")
        mlflow.log_dict(leaderboard, "leaderboard.json")
        for path in figures:
            mlflow.log_artifact(str(path), "figures")
    span_parent(run.info.run_id)
    return run.info.run_id


def metric_name(text: str) -> str:
    """A class name as an MLflow metric-name segment ('T-shirt/top' -> 't-shirt_top')."""
    return re.sub(r"[^a-z0-9_.-]+", "_", text.lower()).strip("_") or "class"


def mlflow_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's test metrics under their MLflow names, plus one accuracy per class."""
    metrics = {name: report[key] for key, name in TEST_METRICS.items()}
    for name, value in report["per_class_accuracy"].items():
        if value is not None:
            metrics[f"test/class_accuracy/{metric_name(name)}"] = value
    return {key: float(value) for key, value in metrics.items() if math.isfinite(value)}


def log_test_report(report: Mapping[str, Any], tracking_uri: str, run_id: str) -> dict[str, float]:
    """Add the test metrics and the confusion matrix to the variant's training run."""
    metrics = mlflow_metrics(report)
    figure = confusion_figure(
        np.asarray(report["confusion_matrix"]),
        report["class_names"],
        f"{report['variant']} (seed {report['seed']}): test accuracy {report['test_accuracy']:.4f}",
    )
    log_evaluation(
        tracking_uri,
        run_id,
        metrics=metrics,
        report_text=report_json(report),
        confusion={
            "class_names": report["class_names"],
            "confusion_matrix": report["confusion_matrix"],
        },
        figure=figure,
    )
    log.info("logged %d test metrics to MLflow run %s", len(metrics), run_id)
    return metrics
