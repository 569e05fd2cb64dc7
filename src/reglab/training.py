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
never confused. The validation set is not handed to ``model.fit``: Keras would
evaluate it at the training batch size through a new data adapter every epoch,
while the decomposition measures it anyway, in a few large ``predict_on_batch``
calls, at a fraction of the cost.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
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


# Images the activity penalty is measured on at the end of each epoch.
PENALTY_SAMPLE = 256

# Images per predict_on_batch call when measuring losses. On the 2-core CPU, 512
# images a call ran about 3x faster per image than 2,000 (cache-sized
# activations) and 6x faster than Keras's evaluate at batch 64.
PREDICT_CHUNK = 512


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


def penalty(model: keras.Model, sample: np.ndarray | None = None) -> float:
    """Sum of model.losses: the weight penalties at the model's current weights.

    Activity penalties depend on the inputs and exist only after a call; with a
    ``sample``, the model is called on it (dropout off) so they are measured on
    it too instead of being left over from a training step.
    """
    if sample is not None and any(
        getattr(layer, "activity_regularizer", None) for layer in model.layers
    ):
        model(sample, training=False)
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

    def __init__(
        self,
        train_probe: tuple[np.ndarray, np.ndarray],
        validation: tuple[np.ndarray, np.ndarray],
        label: str,
        batch_size: int = PREDICT_CHUNK,
    ):
        super().__init__()
        self.train_probe = train_probe
        self.validation = validation
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
        weight_penalty = penalty(self.model, x[:PENALTY_SAMPLE])
        total = data_loss + weight_penalty
        val_data_loss, val_accuracy = _data_loss_and_accuracy(
            self.model, *self.validation, self.batch_size
        )
        logs.update(
            {
                "val_data_loss": val_data_loss,
                "val_accuracy": val_accuracy,
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
    """Plain cross-entropy and accuracy with dropout and noise off (training=False).

    ``predict_on_batch`` reuses the compiled predict function; ``predict`` would
    build a data adapter and callbacks every epoch, a measurable cost.
    """
    logits = np.concatenate(
        [
            model.predict_on_batch(x[start : start + batch_size])
            for start in range(0, len(x), batch_size)
        ]
    )
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
    resumed_from_epoch: int = 0


@dataclass
class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Kept here rather than as a Keras callback: training runs one ``fit`` call per
    epoch (see :func:`fit`), and its state must survive a restart.
    """

    monitor: str = "val_data_loss"
    patience: int = 3
    min_delta: float = 0.0
    restore_best_weights: bool = True
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0

    def update(self, value: float, epoch: int) -> tuple[bool, bool]:
        """Returns (improved, stop)."""
        sign = -1.0 if "accuracy" in self.monitor else 1.0
        if self.best is None or sign * (value - self.best) < -self.min_delta:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True, False
        self.wait += 1
        return False, self.wait >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}


class Checkpoint:
    """Training state after each epoch, so a killed run resumes where it stopped.

    Holds the weights with the optimizer's state, the best weights (for early
    stopping), the history so far and whatever the caller keeps in ``extras``.
    A checkpoint written for another config (``fingerprint``) is discarded.
    Every file is written to a temporary name and renamed, so a kill during a
    save leaves the previous complete checkpoint.
    """

    def __init__(self, directory: str | Path, fingerprint: str):
        self.directory = Path(directory)
        self.fingerprint = fingerprint

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    def peek(self) -> dict[str, Any] | None:
        """The saved state if it belongs to this config, without touching a model."""
        import json

        if not self.state_file.exists():
            return None
        state = json.loads(self.state_file.read_text())
        if state.get("fingerprint") != self.fingerprint:
            log.warning("discarding checkpoint %s: written for another config", self.directory)
            self.clear()
            return None
        return state

    def save(self, model: keras.Model, state: dict[str, Any], best: list | None) -> None:
        import json
        import os

        self.directory.mkdir(parents=True, exist_ok=True)
        epoch = state["epoch"]
        weights_file = self.directory / f"epoch-{epoch}.weights.h5"
        model.save_weights(weights_file)
        # save_weights leaves out the random layers' seed states; without them a
        # resumed run would draw other dropout masks than an uninterrupted one.
        np.savez(self.directory / f"seeds-{epoch}.npz", *[v.numpy() for v in seed_states(model)])
        if best is not None:
            np.savez(self.directory / f"best-{epoch}.npz", *best)
        temporary = self.directory / "state.json.tmp"
        temporary.write_text(json.dumps({**state, "fingerprint": self.fingerprint}))
        os.replace(temporary, self.state_file)  # the commit point
        for stale in self.directory.iterdir():
            if (
                stale.name.startswith(("epoch-", "best-", "seeds-"))
                and f"-{epoch}." not in stale.name
            ):
                stale.unlink()

    def restore(self, model: keras.Model, state: dict[str, Any]) -> list | None:
        epoch = state["epoch"]
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self.directory / f"epoch-{epoch}.weights.h5")
        with np.load(self.directory / f"seeds-{epoch}.npz") as saved:
            for index, variable in enumerate(seed_states(model)):
                variable.assign(saved[f"arr_{index}"])
        best_file = self.directory / f"best-{epoch}.npz"
        if best_file.exists():
            with np.load(best_file) as saved:
                return [saved[f"arr_{index}"] for index in range(len(saved.files))]
        return None

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.directory, ignore_errors=True)


def seed_states(model: keras.Model) -> list[Any]:
    """The seed generators' state variables: in ``variables`` but not in ``weights``."""
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of the training images in an epoch: a function of (seed, epoch) alone.

    Keras's own shuffling depends on how many epochs this process has run, so a
    resumed run would see other batches; this order is the same after a restart.
    """
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([seed, epoch]).permutation(size)


def epoch_batches(
    x: np.ndarray, y: np.ndarray, seed: int, epochs: range, batch_size: int, shuffle: bool
) -> Any:
    """A ``tf.data`` pipeline of the training batches of ``epochs``, in :func:`epoch_order`.

    Each epoch is batched on its own, so no batch straddles two epochs and the
    last one may be short, as with ``model.fit`` on arrays. The images stay in
    memory as tensors; a batch is a gather, prepared ahead while the previous
    one trains.
    """
    import tensorflow as tf

    orders = np.stack([epoch_order(len(x), seed, epoch, shuffle) for epoch in epochs])
    images, labels = tf.constant(x), tf.constant(y)
    return (
        tf.data.Dataset.from_tensor_slices(orders.astype(np.int32))
        .flat_map(lambda order: tf.data.Dataset.from_tensor_slices(order).batch(batch_size))
        .map(
            lambda index: (tf.gather(images, index), tf.gather(labels, index)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .prefetch(tf.data.AUTOTUNE)
    )


class _EpochEnd(keras.callbacks.Callback):
    """Early stopping and the checkpoint, after every other callback of the epoch."""

    def __init__(
        self,
        history: EpochHistory,
        early_stopping: EarlyStopping | None,
        checkpoint: Checkpoint | None,
        extras: dict[str, Any],
        best_weights: list | None,
        label: str,
    ):
        super().__init__()
        self.history = history
        self.early_stopping = early_stopping
        # Resolved here, so an unknown monitor fails before the first epoch.
        self.monitor_key = _history_key(early_stopping.monitor) if early_stopping else None
        self.checkpoint = checkpoint
        self.extras = extras
        self.best_weights = best_weights
        self.label = label
        self.stopped = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        stopper = self.early_stopping
        if stopper is not None:
            improved, self.stopped = stopper.update(
                self.history.rows[-1][self.monitor_key], epoch + 1
            )
            if improved and stopper.restore_best_weights:
                self.best_weights = self.model.get_weights()
        if self.checkpoint is not None:
            self.checkpoint.save(
                self.model,
                {
                    "epoch": epoch + 1,
                    "history": self.history.rows,
                    "extras": self.extras,
                    "early_stopping": stopper.state() if stopper else None,
                },
                self.best_weights,
            )
        if self.stopped:
            log.info("%s: early stopping after epoch %d", self.label, epoch + 1)
            self.model.stop_training = True


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
    train_probe_size: int = 512,
    callbacks: list[keras.callbacks.Callback] | None = None,
    early_stopping: EarlyStopping | None = None,
    checkpoint: Checkpoint | None = None,
    extras: dict[str, Any] | None = None,
) -> TrainingResult:
    """Train a compiled model; returns the decomposed per-epoch history.

    One ``model.fit`` call over :func:`epoch_batches`: epoch ``e`` sees the
    training images in ``epoch_order(seed, e)``, so the same seed gives the same
    batches whether or not the run was interrupted and resumed. ``callbacks``
    run after the loss decomposition, so they see its numbers; early stopping
    and the checkpoint come last. ``extras`` is saved with each checkpoint and
    restored into the same dict, for callers' own state.
    """
    x_train, y_train = train
    x_val, y_val = validation
    y_train_1h, y_val_1h = one_hot(y_train, num_classes), one_hot(y_val, num_classes)
    probe = seeded_subset(x_train, y_train_1h, train_probe_size, seed)
    history = EpochHistory()
    extras = extras if extras is not None else {}
    start, best_weights = 0, None
    state = checkpoint.peek() if checkpoint else None
    if state:
        best_weights = checkpoint.restore(model, state)
        start = state["epoch"]
        history.rows = state["history"]
        extras.update(state["extras"])
        if early_stopping is not None:
            early_stopping.best = state["early_stopping"]["best"]
            early_stopping.best_epoch = state["early_stopping"]["best_epoch"]
            early_stopping.wait = state["early_stopping"]["wait"]
        log.info("%s: resuming from the checkpoint after epoch %d", label, start)
    log.info(
        "training %s: %d train / %d validation images, epochs %d..%d, batch %d",
        label,
        len(x_train),
        len(x_val),
        start + 1,
        epochs,
        batch_size,
    )
    end = _EpochEnd(history, early_stopping, checkpoint, extras, best_weights, label)
    # A run killed after the epoch that stopped it early has nothing left to train.
    end.stopped = bool(early_stopping and early_stopping.wait >= early_stopping.patience)
    if start < epochs and not end.stopped:
        model.fit(
            epoch_batches(x_train, y_train_1h, seed, range(start, epochs), batch_size, shuffle),
            initial_epoch=start,
            epochs=epochs,
            steps_per_epoch=math.ceil(len(x_train) / batch_size),
            shuffle=False,  # the order is epoch_order's
            callbacks=[
                LossDecomposition(probe, (x_val, y_val_1h), label=label),
                history,
                *(callbacks or []),
                end,
            ],
            verbose=0,
        )
    best_epoch = early_stopping.best_epoch if early_stopping else None
    if early_stopping is not None and early_stopping.restore_best_weights and end.best_weights:
        model.set_weights(end.best_weights)
    return TrainingResult(history.rows, len(history.rows), end.stopped, best_epoch, start)


def _history_key(monitor: str) -> str:
    """Early stopping watches the decomposed numbers (val_data_loss, val_accuracy, ...)."""
    if monitor not in HISTORY_COLUMNS:
        raise ValueError(
            f"early_stopping.monitor={monitor!r}: unknown; "
            f"choose one of {list(HISTORY_COLUMNS[1:])}"
        )
    return monitor
