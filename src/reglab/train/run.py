"""Train one variant under one seed, then test it: the one place that unpacks the config.

Everything below this module takes plain values or built objects; this module
reads the validated :class:`~reglab.config.schema.Config` and wires the pieces. The
train stage, the ad-hoc command line and a search's trials all call
:func:`train_variant`; the stages and the command line test the result with
:func:`evaluate_run` (:func:`train_and_evaluate` does both).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

import reglab
from reglab import tracking
from reglab.config.data import DataConfig
from reglab.config.paths import (
    RunKey,
    eval_file,
    history_file,
    metrics_file,
    model_dir,
    run_record_file,
)
from reglab.config.recipes import EarlyStoppingConfig, RegularizerConfig
from reglab.config.schema import Config, config_hash, pipeline_key, run_params
from reglab.core.digest import digest, tree_digest
from reglab.core.io import remove_leftovers, write_atomic, writing_dir
from reglab.data.prepare import dataset_classes, load_splits
from reglab.evaluate import evaluation
from reglab.evaluate.metrics import HISTORY_COLUMNS
from reglab.model import source, weights
from reglab.model.build import build_model, describe_model, save_model
from reglab.model.imports import user_modules, user_packages
from reglab.report.weight_figures import HistogramImages
from reglab.tracking import secrets
from reglab.train.checkpoint import Checkpoint, TrainingState
from reglab.train.fit import (
    EarlyStopping,
    EpochHook,
    compile_model,
    fit,
    make_optimizer,
    seed_everything,
)
from reglab.train.progress import EpochProgress

log = logging.getLogger(__name__)


def train_variant(
    config: Config,
    key: str | RunKey,
    *,
    hooks: Sequence[EpochHook] = (),
    parent_run_id: str | None = None,
    run_tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train ``key`` (``<variant>@<seed>``), log it to MLflow, write its outputs; returns
    run.json's content with the run record's (:func:`run_record`).

    A killed run resumes from its checkpoint (outside DVC's outputs) in the same
    MLflow run. ``hooks`` get every epoch's history row; ``parent_run_id`` nests
    the run under that run instead of the pipeline's; ``run_tags`` are added to the
    run's own.
    """
    key = RunKey.parse(key)
    recipe = config.run_recipe(key.variant, key.seed)
    train, validation = load_training_data(config.paths.processed, config.data)
    model_dir = models_folder(config, key)
    uri = tracking.configure(
        config.tracking.uri, config.tracking.experiment, config.tracking.server_wait_s
    )
    params = run_params(config, key.variant, key.seed)
    checkpoint, state = load_state(config, key, params)
    resumed_from = state.epoch
    model = prepare_model(config, recipe, key.seed, train[0].shape[1:])
    with (
        open_run(config, key, state.run_id, parent_run_id, run_tags) as run,
        EpochProgress(str(key), config.train.epochs, state.epoch) as progress,
    ):
        code = source.code_files(config.model, Path.cwd())
        begin_logging(run.info.run_id, state, params, model, config.paths.processed, code)
        log_epoch = epoch_logger(model, config.evaluation.sparsity_threshold, uri)
        state = fit(
            model, train, validation, state,
            num_classes=dataset_classes(config.paths.processed, config.data).num_classes,
            epochs=config.train.epochs,
            batch_size=config.train.batch_size,
            shuffle=config.train.shuffle,
            seed=key.seed,
            label=str(key),
            train_probe_size=config.train.train_probe_size,
            predict_batch_size=config.evaluation.batch_size,
            calibration_bins=config.evaluation.calibration_bins,
            sparsity_threshold=config.evaluation.sparsity_threshold,
            early_stopping=make_early_stopping(recipe.early_stopping, state),
            checkpoint=checkpoint,
            hooks=[log_epoch, progress, *hooks],
            histogram=lambda: weights.histograms(model, config.tracking.histogram_bins),
            histogram_every=config.tracking.histogram_every,
        )  # fmt: skip
        summary = run_summary(key, model, state, config_hash(config))
        record = run_record(key, state, uri, config_hash(config), resumed_from)
        outputs = (model_dir, history_file(config.paths.history, key))
        write_outputs(model, summary, state.history, *outputs)
        write_atomic(run_record_file(config.paths.runs, key), json.dumps(record, indent=2) + "\n")
        histogram_images = HistogramImages(str(key), state.histograms)
        finish_logging(model, state, histogram_images, key, validation[0][:8], config, outputs)
    checkpoint.clear()
    log.info("%s: trained %d epochs, run %s", key, state.epoch, state.run_id)
    return {**summary, **record}


def train_and_evaluate(
    config: Config, key: str | RunKey, run_tags: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """:func:`train_variant`, then :func:`evaluate_run`: a trained model is tested once,
    in the same process; returns the eval report."""
    train_variant(config, key, run_tags=run_tags)
    return evaluate_run(config, key)


def evaluate_run(config: Config, key: str | RunKey) -> dict[str, Any]:
    """Test ``models/<key>``, write its reports and log them to its training run."""
    key = RunKey.parse(key)
    recipe = config.run_recipe(key.variant, key.seed)  # an unknown one fails before any work
    # The user's registered Keras objects, so that the saved model loads in safe mode.
    source.import_user_modules(config.model, [recipe])
    paths = config.paths
    result = evaluation.evaluate_variant(
        model_dir(paths.models, key),
        load_splits(paths.processed, config.data, splits=("train", "test")),
        class_names=dataset_classes(paths.processed, config.data).names,
        batch_size=config.evaluation.batch_size,
        calibration_bins=config.evaluation.calibration_bins,
        sparsity_threshold=config.evaluation.sparsity_threshold,
    )
    evaluation.write_outputs(
        result,
        eval_file(paths.eval, key),
        Path(paths.plots, "confusion", f"{key}.csv"),
        Path(paths.weights, f"{key}.json"),
        metrics_file(paths.metrics, key),
    )
    run_id = read_run_record(config.paths.runs, key)["mlflow_run_id"]
    tracking.log_test_report(result.report, tracking.resolve_uri(config.tracking.uri), run_id)
    return result.report


def models_folder(config: Config, key: RunKey) -> Path:
    """Where the model of ``key`` goes; an unwritable place fails here, before any work."""
    folder = model_dir(config.paths.models, key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def finish_logging(
    model: keras.Model,
    state: TrainingState,
    histogram_images: HistogramImages,
    key: RunKey,
    example_inputs: np.ndarray,
    config: Config,
    outputs: Sequence[Path],
) -> None:
    """Log what comes after the epochs. The outputs are written first: if the server
    is gone, the training is kept and the re-run logs the rest without retraining."""
    written = " and ".join(str(path) for path in outputs)
    modules = user_modules(config.model, [config.run_recipe(key.variant, key.seed)])
    lost = (
        f"{key} is trained and written to {written}, but the tracking server "
        f"{tracking.resolve_uri(config.tracking.uri)} did not answer within "
        f"{config.tracking.server_wait_s:g} s: the model, kernel histograms and unsent epoch "
        "metrics are not logged; run the same command again once the server is back, "
        "and it logs them into the same run without retraining"
    )
    with tracking.lost_server_is(lost):
        tracking.log_trained_model(
            model,
            histogram_images,
            state.history,
            draw_histograms=config.tracking.histogram_images,
            example_inputs=example_inputs if config.tracking.log_model else None,
            registered_model_name=config.tracking.registered_model_name,
            class_names=dataset_classes(config.paths.processed, config.data).names,
            keras_file=outputs[0] / "model.keras",  # the model folder, written already
            user_code=user_packages(modules, Path.cwd()),
            user_modules=modules,
        )


def open_run(
    config: Config,
    key: RunKey,
    run_id: str | None,
    parent_run_id: str | None,
    extra_tags: Mapping[str, str] | None,
) -> Any:
    """The run of ``key`` (a new one, or ``run_id`` to resume), nested under its parent:
    ``parent_run_id`` if given, else the run that groups this pipeline's runs."""
    tags = {**run_tags_of(config, key.variant, key.seed), **(extra_tags or {})}
    parent = parent_run_id or tracking.pipeline_parent(
        config.tracking.experiment, pipeline_key(config, tags["git_commit"]), tags
    )
    return tracking.variant_run(
        str(key), tags, parent, config.tracking.system_metrics, run_id=run_id
    )


def begin_logging(
    run_id: str,
    state: TrainingState,
    params: Mapping[str, Any],
    model: keras.Model,
    data: str,
    model_code: Sequence[Path] = (),
) -> None:
    """A new run records its setup; a resumed one logs the epochs its checkpoint holds
    but the tracking store missed (their metrics were still queued at the kill)."""
    if state.run_id is None:
        state.run_id = run_id
        tracking.log_run_setup(params, describe_model(model), data, model_code)
    else:
        tracking.log_missing_epochs(run_id, state.history)


def load_training_data(
    processed_dir: str, data: DataConfig
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """The training and validation splits, prepared for ``data`` (refused otherwise);
    the held-out test set is the evaluate stage's alone."""
    splits = load_splits(processed_dir, data, splits=("train", "val"))
    return splits["train"], splits["val"]


def prepare_model(
    config: Config, recipe: RegularizerConfig, seed: int, input_shape: tuple[int, ...]
) -> keras.Model:
    """Seeded, built and compiled: the same seed gives the same initial weights, and
    the same saved config whatever this process built before (Keras numbers
    unnamed objects per session)."""
    # Keras's global state reset; Python's collector left to run on its own schedule
    # (free_memory=False): a forced collection takes most of a second in a worker that
    # runs trial after trial, the loop Keras's docs say to skip it in.
    keras.backend.clear_session(free_memory=False)
    seed_everything(seed, config.train.deterministic)
    keras.mixed_precision.set_global_policy(config.train.precision)
    num_classes = dataset_classes(config.paths.processed, config.data).num_classes
    model = build_model(config.model, recipe, input_shape, num_classes, seed)
    optimizer = make_optimizer(
        config.optimizer.name,
        config.optimizer.learning_rate,
        config.optimizer.momentum,
        recipe.weight_decay,
    )
    compile_model(model, optimizer, recipe.label_smoothing)
    return model


def make_early_stopping(rule: EarlyStoppingConfig, state: TrainingState) -> EarlyStopping | None:
    if not rule.enabled:
        return None
    return EarlyStopping(
        rule.monitor,
        rule.patience,
        rule.min_delta,
        rule.restore_best_weights,
        initial_state=state.early_stopping,
        initial_best_weights=state.best_weights,
    )


def epoch_logger(model: keras.Model, sparsity_threshold: float, uri: str) -> EpochHook:
    """The hook that logs each epoch's losses and weight statistics to the active run.

    If the tracking server stops answering, training goes on without it: the
    epochs stay in the checkpoint and the history, and are logged at the end or
    by the re-run.
    """
    lost: list[int] = []

    def log_epoch(epoch: int, row: Mapping[str, float]) -> None:
        if lost:
            return
        statistics = weights.weight_statistics(model, sparsity_threshold)
        try:
            with tracking.lost_server_is("the tracking server stopped answering"):
                tracking.log_epoch(row, statistics, epoch)
        except tracking.TrackingLost:
            lost.append(epoch)
            log.warning("%s: the tracking server stopped answering in epoch %d", uri, epoch)

    return log_epoch


def run_summary(
    key: RunKey, model: keras.Model, state: TrainingState, hash_: str
) -> dict[str, Any]:
    """run.json (a DVC output): what evaluate and compare need to know about the trained
    model, the same in every clone for the same training; no path, no run id."""
    stopping = state.early_stopping
    return {
        "variant": key.variant,
        "seed": key.seed,
        "epochs_trained": state.epoch,
        "stopped_early": state.stopped_early,
        "best_epoch": stopping["best_epoch"] + 1 if stopping else None,
        "params_count": int(model.count_params()),
        "best_val_data_loss": min(row["val_data_loss"] for row in state.history),
        "config_hash": hash_,
    }


def run_record(
    key: RunKey, state: TrainingState, uri: str, hash_: str, resumed_from: int
) -> dict[str, Any]:
    """``<paths.runs>/<key>.json``: this machine's record of the model's MLflow run, outside
    DVC's outputs (the MLflow run holds the same facts for a teammate)."""
    return {
        "variant": key.variant,
        "seed": key.seed,
        "mlflow_run_id": state.run_id,
        "tracking_uri": secrets.redact(uri),
        "resumed_from_epoch": resumed_from,
        "config_hash": hash_,
    }


def read_run_record(runs: str | Path, key: str | RunKey) -> dict[str, Any]:
    """The run record :func:`train_variant` wrote for ``key``."""
    path = run_record_file(runs, key)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise evaluation.EvaluationError(
            f"{path}: not found; the MLflow run of {key} is recorded by its train stage "
            "on this machine: run it here (dvc repro) first"
        ) from None


def write_outputs(
    model: keras.Model,
    summary: Mapping[str, Any],
    history: list[dict[str, float]],
    model_dir: Path,
    history_path: Path,
) -> None:
    """The model folder (model.keras, run.json) swapped in whole; the history CSV."""
    for leftover in [*remove_leftovers(model_dir), *remove_leftovers(history_path)]:
        log.info("removed %s, left by an interrupted run", leftover)
    with writing_dir(model_dir) as staging:
        save_model(model, staging / "model.keras", shown_as=model_dir / "model.keras")
        (staging / "run.json").write_text(json.dumps(dict(summary), indent=2) + "\n")
        write_atomic(history_path, history_csv(history))


def history_csv(rows: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: row[key] for key in HISTORY_COLUMNS} for row in rows)
    return buffer.getvalue()


def fingerprint(
    params: Mapping[str, Any], processed_dir: str, model_code: str = ""
) -> dict[str, str]:
    """What a checkpoint is valid for: the config (where outputs go aside), the code
    of the package and of the user's model, the data's digests. A change in any of
    them starts over."""
    from reglab.data.prepare import load_manifest

    return {
        "config": digest({key: value for key, value in params.items() if key != "paths"}),
        "code": tree_digest(Path(reglab.__file__).parent) + model_code,
        "data": digest(load_manifest(processed_dir)["digests"]),
    }


def load_state(
    config: Config, key: RunKey, params: Mapping[str, Any]
) -> tuple[Checkpoint, TrainingState]:
    """The run's checkpoint (tied to its params, code and data) and its state, or a
    fresh one; a discarded checkpoint's run ends KILLED."""
    model_code = source.code_digest(config.model, Path.cwd())
    checkpoint = Checkpoint(
        Path(config.paths.checkpoints, str(key)),
        fingerprint(params, config.paths.processed, model_code),
    )
    state = checkpoint.load()
    if checkpoint.discarded_run_id:
        tracking.end_orphaned_run(checkpoint.discarded_run_id)
    return checkpoint, state or TrainingState()


def run_tags_of(config: Config, variant: str, seed: int) -> dict[str, str]:
    tags = {
        "variant": variant,
        "dataset": config.data.name,
        "model": config.model.name,
        "seed": str(seed),
        "config_hash": config_hash(config),
        **tracking.git_state(),
    }
    return tags
