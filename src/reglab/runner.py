"""Train one variant, top to bottom: the one place that unpacks the config.

Everything below this module takes plain values or built objects; this module
reads the validated :class:`~reglab.config.Config` and wires the pieces:
seed -> data -> model -> MLflow run -> fit -> artifacts -> outputs on disk.
The train stage, the ad-hoc command line and the MLproject entry point all call
:func:`train_variant`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np

from reglab import secrets, tracking, weights
from reglab.config import Config, config_hash, current_umask, write_atomic
from reglab.errors import ReglabError
from reglab.evaluation import parse_run_key
from reglab.models import build_model, describe_model
from reglab.training import (
    HISTORY_COLUMNS,
    Checkpoint,
    EarlyStopping,
    compile_model,
    fit,
    make_optimizer,
    seed_everything,
)

log = logging.getLogger(__name__)


class MissingInput(ReglabError):
    """An earlier stage's output is missing."""


def load_data(processed_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from reglab.data.prepare import load_splits

    if not Path(processed_dir, "manifest.json").exists():
        raise MissingInput(
            f"{processed_dir}/manifest.json not found; run the data stages first "
            "(`dvc repro preprocess`)"
        )
    return load_splits(processed_dir)


def run_params(config: Config, variant: str) -> dict[str, Any]:
    """What a variant's run depends on: everything but the other variants."""
    params = asdict(config)
    params.pop("variants")
    params["variant"] = variant
    params["regularizer"] = asdict(config.variants[variant])
    return params


class HistogramRecorder(keras.callbacks.Callback):
    """Kernel histograms every N epochs, kept in ``extras["histograms"]``.

    Only the counts are taken during training (cheap); figures are drawn once
    training is over, so the epochs run at full speed. Living in the checkpoint's
    extras, they survive a restart.
    """

    def __init__(self, extras: dict[str, Any], every: int, bins: int):
        super().__init__()
        self.extras = extras
        self.every = every
        self.bins = bins

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every == 0:
            self.extras["histograms"][str(epoch + 1)] = weights.histograms(self.model, self.bins)


class EpochLogger(keras.callbacks.Callback):
    """Per-epoch losses and weight statistics into the active MLflow run."""

    def __init__(self, sparsity_threshold: float):
        super().__init__()
        self.sparsity_threshold = sparsity_threshold

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        metrics = tracking.epoch_metrics(logs or {})
        metrics.update(weights.weight_statistics(self.model, self.sparsity_threshold))
        tracking.log_metrics(metrics, step=epoch + 1)


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row[key] for key in HISTORY_COLUMNS})
    write_atomic(path, buffer.getvalue())


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written folder into place; the old one goes only after."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)


def train_variant(config: Config, key: str) -> dict[str, Any]:
    """Train one variant, log it to MLflow and write its outputs. Returns run.json's content.

    ``key`` is the variant's name, or ``<variant>@<seed>`` for one of the extra
    seeds; it names the outputs (``models/<key>``, ``<history>/<key>.csv``).

    A checkpoint after every epoch (outside DVC's outputs, which DVC deletes
    before a stage runs) lets a killed run resume at its last epoch, in the
    same MLflow run, and end with the numbers an uninterrupted run would have.
    """
    variant, seed = parse_run_key(key)
    recipe = config.variant(variant)
    if seed is not None:
        if seed not in config.extra_seeds:
            raise ReglabError(f"{key}: seed {seed} is not in extra_seeds={config.extra_seeds}")
        config = dataclasses.replace(config, seed=seed)
    splits = load_data(config.paths.processed)
    model_dir = Path(config.paths.models, key)
    model_dir.parent.mkdir(parents=True, exist_ok=True)  # unwritable? fail before any work
    uri = tracking.configure(config.tracking.uri, config.tracking.experiment)
    seed_everything(config.seed, config.train.deterministic)
    keras.mixed_precision.set_global_policy(config.train.precision)
    x_train, _ = splits["train"]
    num_classes = config.data.num_classes

    model = build_model(config.model, recipe, x_train.shape[1:], num_classes, config.seed)
    optimizer = make_optimizer(
        config.optimizer.name,
        config.optimizer.learning_rate,
        config.optimizer.momentum,
        recipe.weight_decay,
    )
    compile_model(model, optimizer, recipe.label_smoothing)
    stopper = None
    if recipe.early_stopping.enabled:
        rule = recipe.early_stopping
        stopper = EarlyStopping(
            rule.monitor, rule.patience, rule.min_delta, rule.restore_best_weights
        )
    params = run_params(config, variant)
    checkpoint = Checkpoint(Path(config.paths.checkpoints, key), fingerprint_of(params))
    resumed = checkpoint.peek()

    tags = run_tags(config, variant)
    parent = tracking.pipeline_parent(
        config.tracking.experiment, pipeline_key(config, tags), "pipeline", tags_shared(tags)
    )
    staging = Path(tempfile.mkdtemp(dir=model_dir.parent, prefix=f".{key}.tmp-"))
    staging.chmod(0o777 & ~current_umask())
    try:
        with tracking.start_variant_run(
            key,
            tags,
            parent,
            config.tracking.system_metrics,
            run_id=resumed["extras"]["mlflow_run_id"] if resumed else None,
        ) as run:
            extras: dict[str, Any] = {"mlflow_run_id": run.info.run_id, "histograms": {}}
            if not resumed:
                mlflow.log_params(tracking.flatten(params))
                tracking.log_text_artifact(json.dumps(params, indent=2, default=str), "config.json")
                tracking.log_text_artifact(describe_model(model), "model_summary.txt")
                # Enough to re-create the run from MLflow alone (see the README).
                tracking.log_text_artifact(
                    tracking.installed_packages(), "environment/requirements.txt"
                )
                log_data_inputs(config.paths.processed)
                extras["histograms"]["0"] = weights.histograms(
                    model, config.tracking.histogram_bins
                )
            result = fit(
                model,
                splits["train"],
                splits["val"],
                num_classes=num_classes,
                epochs=config.train.epochs,
                batch_size=config.train.batch_size,
                shuffle=config.train.shuffle,
                seed=config.seed,
                label=key,
                train_probe_size=config.train.train_probe_size,
                callbacks=[
                    EpochLogger(config.tracking.sparsity_threshold),
                    HistogramRecorder(
                        extras, config.tracking.histogram_every, config.tracking.histogram_bins
                    ),
                ],
                early_stopping=stopper,
                checkpoint=checkpoint,
                extras=extras,
            )
            tracking.flush()
            histograms = extras["histograms"]
            histograms.setdefault(
                str(result.epochs_trained),
                weights.histograms(model, config.tracking.histogram_bins),
            )
            log_weight_histograms({int(k): v for k, v in histograms.items()}, key)
            model.save(staging / "model.keras")
            if config.tracking.log_model:
                tracking.log_keras_model(
                    model, splits["val"][0][:8], config.tracking.registered_model_name
                )
            summary = {
                "variant": variant,
                "seed": config.seed,
                "mlflow_run_id": run.info.run_id,
                "tracking_uri": secrets.redact(uri),
                "epochs_trained": result.epochs_trained,
                "stopped_early": result.stopped_early,
                "best_epoch": result.best_epoch,
                "resumed_from_epoch": result.resumed_from_epoch,
                "params_count": int(model.count_params()),
                "best_val_data_loss": min(row["val_data_loss"] for row in result.history),
                "config_hash": config_hash(config),
            }
            mlflow.log_metrics({"epochs_trained": result.epochs_trained})
            (staging / "run.json").write_text(json.dumps(summary, indent=2) + "\n")
            write_history(result.history, Path(config.paths.history, f"{key}.csv"))
            replace_dir(staging, model_dir)
        checkpoint.clear()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s: trained %d epochs, run %s", key, result.epochs_trained, summary["mlflow_run_id"])
    return summary


def fingerprint_of(params: dict[str, Any]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()


def run_tags(config: Config, variant: str) -> dict[str, str]:
    tags = {
        "variant": variant,
        "dataset": config.data.name,
        "model": config.model.name,
        "seed": str(config.seed),
        "config_hash": config_hash(config),
        **tracking.git_state(),
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    return tags


def tags_shared(tags: dict[str, str]) -> dict[str, str]:
    """The tags that hold for the whole pipeline (the parent run)."""
    return {key: value for key, value in tags.items() if key not in ("variant", "config_hash")}


def pipeline_key(config: Config, tags: dict[str, str]) -> str:
    """What every variant of one pipeline execution shares: config but variants, and code."""
    import hashlib

    shared = asdict(config)
    for own in ("variants", "tracking", "seed"):  # a variant's own, or one seed of several
        shared.pop(own)
    text = json.dumps(shared, sort_keys=True, default=str) + tags["git_commit"]
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def log_data_inputs(processed_dir: str) -> None:
    """Which data the run used, with the manifest's digest, shown in the UI's Datasets."""
    from reglab.data.prepare import mlflow_inputs

    for dataset, context in mlflow_inputs(processed_dir):
        mlflow.log_input(dataset, context=context)


def log_weight_histograms(
    by_epoch: dict[int, dict[str, dict[str, list[float]]]], variant: str
) -> None:
    """Images with a step (the UI scrubs through training), raw counts, a start/end overlay."""
    for epoch, hists in sorted(by_epoch.items()):
        figure = weights.plot_histograms(hists, f"{variant}: kernel weights, epoch {epoch}")
        mlflow.log_image(weights.render(figure), key="weights/kernel_histograms", step=epoch)
    tracking.log_text_artifact(
        json.dumps({str(epoch): hists for epoch, hists in sorted(by_epoch.items())}),
        "weights/histograms.json",
    )
    first, last = min(by_epoch), max(by_epoch)
    names = list(by_epoch[first])
    # The first layer and the last hidden one: where the tutorials look.
    layers = [names[0], names[-2]] if len(names) > 2 else names
    figure = weights.plot_start_end_overlay(
        by_epoch[first],
        by_epoch[last],
        layers,
        f"{variant}: kernel weights at epoch {first} and {last}",
    )
    tracking.log_figure(figure, "weights/histograms_start_end.png")
    final = weights.plot_histograms(by_epoch[last], f"{variant}: kernel weights after training")
    tracking.log_figure(final, "weights/histograms_final.png")
    import matplotlib.pyplot as plt

    plt.close("all")
