"""Fit a model with the data loss and the regularization penalty kept apart.

Keras reports one training loss: cross-entropy plus every penalty, averaged over
an epoch with dropout and noise switched on. That number mixes two things the
user wants to see separately, so at the end of each epoch we also measure, with
dropout and noise off (the way evaluation measures):

- ``data_loss``: cross-entropy alone, on a fixed, seeded subset of the training
  data and on the whole validation set;
- ``penalty``: the sum of ``model.losses`` (the weight penalties at that moment);
- ``total_loss`` = data_loss + penalty.

Keras's own training-time numbers are kept under ``fit_*`` names so the two are
never confused.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from reglab.errors import ReglabError

log = logging.getLogger(__name__)

HISTORY_COLUMNS = (
    "epoch",
    "train_data_loss",
    "train_penalty",
    "train_total_loss",
    "train_accuracy",
    "val_data_loss",
    "val_accuracy",
    "val_total_loss",
    "val_penalty",
    "val_penalty_share",
    "penalty_share",
    "fit_total_loss",
    "fit_data_loss",
    "fit_accuracy",
)


class TrainingDiverged(ReglabError):
    """The loss became NaN or infinite."""


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; make TensorFlow's ops deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    if deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def make_optimizer(
    name: str, learning_rate: float, momentum: float = 0.0, weight_decay: float = 0.0
) -> keras.optimizers.Optimizer:
    """The optimizer; a positive weight_decay means decoupled decay (AdamW for Adam)."""
    decay = weight_decay or None
    if name in ("adam", "adamw"):
        if decay:
            return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=decay)
        return keras.optimizers.Adam(learning_rate=learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(
            learning_rate=learning_rate, momentum=momentum, weight_decay=decay
        )
    if name == "rmsprop":
        return keras.optimizers.RMSprop(
            learning_rate=learning_rate, momentum=momentum, weight_decay=decay
        )
    raise ValueError(f"optimizer.name={name!r}: unknown")


def compile_model(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, label_smoothing: float = 0.0
) -> None:
    """Cross-entropy on one-hot labels (label smoothing needs them); data_loss is plain CE."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing
        ),
        metrics=[
            keras.metrics.CategoricalCrossentropy(from_logits=True, name="data_loss"),
            keras.metrics.CategoricalAccuracy(name="accuracy"),
        ],
    )


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def penalty(model: keras.Model) -> float:
    """Sum of model.losses: every weight penalty at the model's current weights."""
    losses = [float(keras.ops.convert_to_numpy(keras.ops.sum(loss))) for loss in model.losses]
    return float(sum(losses))


def seeded_subset(
    x: np.ndarray, y: np.ndarray, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    if size <= 0 or size >= len(x):
        return x, y
    index = np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))
    return x[index], y[index]


class LossDecomposition(keras.callbacks.Callback):
    """Adds data loss, penalty and total (dropout off) to each epoch's logs.

    Runs first among the callbacks so early stopping, logging and the history
    all see the decomposed numbers. A non-finite loss stops training at once.
    """

    def __init__(self, train_probe: tuple[np.ndarray, np.ndarray], batch_size: int, label: str):
        super().__init__()
        self.train_probe = train_probe
        self.batch_size = batch_size
        self.label = label

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        fit_loss = logs.get("loss", float("nan"))
        if not math.isfinite(fit_loss):
            self.model.stop_training = True
            raise TrainingDiverged(
                f"variant {self.label}: the training loss became {fit_loss} in epoch {epoch + 1}; "
                "lower the learning rate or the regularization strength"
            )
        x, y = self.train_probe
        data_loss, accuracy = _data_loss_and_accuracy(self.model, x, y, self.batch_size)
        weight_penalty = penalty(self.model)
        total = data_loss + weight_penalty
        val_data_loss = logs.get("val_data_loss", float("nan"))
        logs.update(
            {
                "train_data_loss": data_loss,
                "train_penalty": weight_penalty,
                "train_total_loss": total,
                "train_accuracy": accuracy,
                "val_total_loss": val_data_loss + weight_penalty,
                "val_penalty": weight_penalty,
                "val_penalty_share": _share(weight_penalty, val_data_loss + weight_penalty),
                "penalty_share": _share(weight_penalty, total),
                "fit_total_loss": fit_loss,
                "fit_data_loss": logs.get("data_loss", float("nan")),
                "fit_accuracy": logs.get("accuracy", float("nan")),
            }
        )


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


def _data_loss_and_accuracy(
    model: keras.Model, x: np.ndarray, y_one_hot: np.ndarray, batch_size: int
) -> tuple[float, float]:
    """Plain cross-entropy and accuracy with dropout and noise off (training=False)."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return cross_entropy(logits, y_one_hot), float(
        np.mean(np.argmax(logits, axis=1) == np.argmax(y_one_hot, axis=1))
    )


def cross_entropy(logits: np.ndarray, y_one_hot: np.ndarray) -> float:
    """Mean categorical cross-entropy from logits, in float64 for a stable value."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-(y_one_hot * log_probs).sum(axis=1).mean())


class EpochHistory(keras.callbacks.Callback):
    """Collects the decomposed per-epoch numbers in HISTORY_COLUMNS order."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        row = {"epoch": epoch + 1}
        row.update({key: float(logs.get(key, float("nan"))) for key in HISTORY_COLUMNS[1:]})
        self.rows.append(row)


@dataclass
class TrainingResult:
    history: list[dict[str, float]]
    epochs_trained: int
    stopped_early: bool
    best_epoch: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def early_stopping_callback(
    monitor: str, patience: int, min_delta: float, restore_best_weights: bool
) -> keras.callbacks.EarlyStopping:
    return keras.callbacks.EarlyStopping(
        monitor=monitor,
        patience=patience,
        min_delta=min_delta,
        restore_best_weights=restore_best_weights,
        mode="max" if "accuracy" in monitor else "min",
        verbose=0,
    )


def fit(
    model: keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    validation: tuple[np.ndarray, np.ndarray],
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    label: str,
    train_probe_size: int = 2000,
    callbacks: list[keras.callbacks.Callback] | None = None,
    early_stopping: keras.callbacks.EarlyStopping | None = None,
) -> TrainingResult:
    """Train a compiled model; returns the decomposed per-epoch history.

    ``callbacks`` run after the loss decomposition (so they see its numbers) and
    before early stopping (so logging sees the last epoch too).
    """
    x_train, y_train = train
    x_val, y_val = validation
    y_train_1h, y_val_1h = one_hot(y_train, num_classes), one_hot(y_val, num_classes)
    probe = seeded_subset(x_train, y_train_1h, train_probe_size, seed)
    history = EpochHistory()
    chain: list[keras.callbacks.Callback] = [
        LossDecomposition(probe, batch_size=max(batch_size, 512), label=label),
        history,
        *(callbacks or []),
    ]
    if early_stopping is not None:
        chain.append(early_stopping)
    log.info(
        "training %s: %d train / %d validation images, %d epochs, batch %d",
        label,
        len(x_train),
        len(x_val),
        epochs,
        batch_size,
    )
    model.fit(
        x_train,
        y_train_1h,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=shuffle,
        validation_data=(x_val, y_val_1h),
        callbacks=chain,
        verbose=0,
    )
    epochs_trained = len(history.rows)
    stopped = early_stopping is not None and early_stopping.stopped_epoch > 0
    best_epoch = None
    if early_stopping is not None and early_stopping.best_epoch is not None:
        best_epoch = int(early_stopping.best_epoch) + 1
    return TrainingResult(history.rows, epochs_trained, stopped, best_epoch)
