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

:func:`fit` is the one training loop: the pipeline's variants, the ad-hoc
command line and every search trial go through it. It takes the
:class:`~reglab.train.checkpoint.TrainingState` to start from and returns the new one;
callers follow the epochs through hooks.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from reglab.core.errors import ReglabError
from reglab.data.inputs import ModelInputs, as_inputs, scale_tensor
from reglab.evaluate.evaluation import expected_calibration_error
from reglab.evaluate.metrics import (
    EPOCH_TIMING,
    HISTORY_COLUMNS,
    accuracy,
    cross_entropy,
    softmax,
)
from reglab.model.weights import overall_sparsity
from reglab.train.checkpoint import Checkpoint, TrainingState

log = logging.getLogger(__name__)

# Model inputs: float32 arrays, or stored arrays read (and scaled) a slice at a time.
Inputs = np.ndarray | ModelInputs

# Images the activity penalty is measured on at the end of each epoch.
PENALTY_SAMPLE = 256


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


# Called after every epoch with the epoch (1-based) and its history row, beside which
# the row a hook gets has the epoch's timing (EPOCH_TIMING), kept out of the history:
# a history is the same whenever and wherever it was trained.
EpochHook = Callable[[int, Mapping[str, float]], None]


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


def seeded_subset(x: Inputs, y: np.ndarray, size: int, seed: int) -> tuple[Inputs, np.ndarray]:
    """``size`` rows drawn by ``seed`` (read from ``x``, scaled), or all of them."""
    if size <= 0 or size >= len(x):
        return x, y
    index = np.sort(np.random.default_rng(seed).choice(len(x), size=size, replace=False))
    return x[index], np.asarray(y[index])


class LossDecomposition(keras.callbacks.Callback):
    """Adds data loss, penalty and total (dropout off) to each epoch's logs.

    Runs first among the callbacks so early stopping and the epoch end see the
    decomposed numbers. A non-finite loss stops training at once.
    """

    def __init__(
        self,
        train_probe: tuple[Inputs, np.ndarray],
        validation: tuple[Inputs, np.ndarray],
        label: str,
        batch_size: int,
        calibration_bins: int = 15,
        sparsity_threshold: float = 1e-3,
    ):
        super().__init__()
        self.train_probe = train_probe
        self.validation = validation
        self.batch_size = batch_size
        self.label = label
        self.calibration_bins = calibration_bins
        self.sparsity_threshold = sparsity_threshold

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
        data_loss, train_accuracy = self._scores(self._logits(x), y)
        weight_penalty = penalty(self.model, x[:PENALTY_SAMPLE])
        total = data_loss + weight_penalty
        x_val, y_val = self.validation
        val_logits = self._logits(x_val)
        val_data_loss, val_accuracy = self._scores(val_logits, y_val)
        logs.update(
            {
                "val_data_loss": val_data_loss,
                "val_accuracy": val_accuracy,
                "val_ece": expected_calibration_error(
                    softmax(val_logits), y_val, self.calibration_bins
                ),
                "sparsity": overall_sparsity(self.model, self.sparsity_threshold),
                "train_data_loss": data_loss,
                "train_penalty": weight_penalty,
                "train_total_loss": total,
                "train_accuracy": train_accuracy,
                "val_total_loss": val_data_loss + weight_penalty,
                "val_penalty": weight_penalty,
                "val_penalty_share": _share(weight_penalty, val_data_loss + weight_penalty),
                "penalty_share": _share(weight_penalty, total),
                "fit_total_loss": fit_loss,
                "fit_data_loss": logs.get("data_loss", float("nan")),
                "fit_accuracy": logs.get("accuracy", float("nan")),
            }
        )

    def _logits(self, x: Inputs) -> np.ndarray:
        """The model's logits with dropout and noise off (training=False).

        ``predict_on_batch`` reuses the compiled predict function; ``predict``
        would build a data adapter and callbacks every epoch, a measurable cost.
        """
        size = self.batch_size
        return np.concatenate(
            [
                self.model.predict_on_batch(x[start : start + size])
                for start in range(0, len(x), size)
            ]
        )

    @staticmethod
    def _scores(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """Plain cross-entropy and accuracy."""
        return cross_entropy(logits, labels), accuracy(np.argmax(logits, axis=1), labels)


def _share(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's early stopping on the decomposed numbers, with a state a checkpoint keeps.

    It watches a history column (``val_data_loss``, ``val_total_loss``,
    ``val_accuracy``), which the loss decomposition puts into the epoch's logs
    before this callback runs. :meth:`state` and ``initial_state`` carry its
    attributes across a restart, so a resumed run stops where an uninterrupted
    one would.
    """

    STATE = ("wait", "best", "best_epoch", "stopped_epoch")

    def __init__(
        self,
        monitor: str,
        patience: int,
        min_delta: float,
        restore_best_weights: bool,
        initial_state: Mapping[str, Any] | None = None,
        initial_best_weights: list[np.ndarray] | None = None,
    ):
        if monitor not in HISTORY_COLUMNS[1:]:
            raise ValueError(
                f"early_stopping.monitor={monitor!r}: unknown; "
                f"choose one of {list(HISTORY_COLUMNS[1:])}"
            )
        super().__init__(
            monitor=monitor,
            patience=patience,
            min_delta=min_delta,
            mode="max" if "accuracy" in monitor else "min",
            restore_best_weights=restore_best_weights,
        )
        self.initial_state = dict(initial_state or {})
        self.initial_best_weights = initial_best_weights

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        for key, value in self.initial_state.items():
            setattr(self, key, value)
        if self.initial_best_weights is not None:
            self.best_weights = self.initial_best_weights

    def state(self) -> dict[str, Any]:
        values = {key: getattr(self, key) for key in self.STATE}
        if values["best"] is not None:
            values["best"] = float(values["best"])
        return values


def epoch_order(size: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order of the training images in an epoch: a function of (seed, epoch) alone.

    Keras's own shuffling depends on how many epochs this process has run, so a
    resumed run would see other batches; this order is the same after a restart.
    """
    if not shuffle:
        return np.arange(size)
    return np.random.default_rng([seed, epoch]).permutation(size)


# Batches gathered at once, and ready ahead, by epoch_batches.
INPUT_PARALLELISM = 2


def epoch_batches(
    x: Inputs,
    y: np.ndarray,
    seed: int,
    epochs: range,
    batch_size: int,
    shuffle: bool,
    num_classes: int | None = None,
) -> Any:
    """A ``tf.data`` pipeline of the training batches of ``epochs``, in :func:`epoch_order`.

    Each epoch is batched on its own, so no batch straddles two epochs and the
    last one may be short, as with ``model.fit`` on arrays. The arrays are never
    copied whole: each batch's rows are gathered from ``x``'s stored array (a
    memory map in the training process) and ``y``, cast and scaled in the
    pipeline (:func:`~reglab.data.inputs.scale_tensor`), prepared ahead while the
    previous batch trains; each epoch's order is drawn when the epoch starts.
    With ``num_classes`` the labels become one-hot there too.
    """
    import tensorflow as tf

    inputs = as_inputs(x)
    labels = y if isinstance(y, np.ndarray) else np.asarray(y)
    size = len(inputs)
    x_dtype = tf.as_dtype(inputs.stored.dtype)
    y_dtype = tf.as_dtype(labels.dtype)

    def order(epoch: np.ndarray) -> np.ndarray:
        return epoch_order(size, seed, int(epoch), shuffle).astype(np.int64)

    def gather(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return inputs.take(index), np.asarray(labels[index])

    def read(index: Any) -> tuple[Any, Any]:
        batch_x, batch_y = tf.numpy_function(gather, [index], (x_dtype, y_dtype), stateful=False)
        batch_x.set_shape((None, *inputs.shape[1:]))
        batch_y.set_shape((None, *labels.shape[1:]))
        batch_x = scale_tensor(batch_x, inputs.pixel_max)
        if num_classes is not None:
            batch_y = tf.one_hot(batch_y, num_classes, dtype=tf.float32)
        return batch_x, batch_y

    def epoch_orders(epoch: Any) -> Any:
        indices = tf.numpy_function(order, [epoch], tf.int64, stateful=False)
        indices.set_shape((size,))
        return tf.data.Dataset.from_tensor_slices(indices).batch(batch_size)

    # Fixed parallelism, no autotuning: tf.data's autotuning thread sleeps for its
    # optimization period (doubling while the iterator lives) and the iterator's
    # teardown at the end of model.fit waited for it, up to 9 s after a trial's last
    # epoch (bench/README.md, "Where a trial's last seconds went"). A batch is a
    # gather of a few rows: two in flight and two ready keep the model fed.
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        tf.data.Dataset.from_tensor_slices(np.asarray(list(epochs), dtype=np.int64))
        .flat_map(epoch_orders)
        .map(read, num_parallel_calls=INPUT_PARALLELISM)
        .prefetch(INPUT_PARALLELISM)
        .with_options(options)
    )


class _EpochEnd(keras.callbacks.Callback):
    """After the decomposition and early stopping: the history row, the kernel
    histograms, the checkpoint, then the caller's hooks (given the epoch's timing too)."""

    def __init__(
        self,
        state: TrainingState,
        early_stopping: EarlyStopping | None,
        checkpoint: Checkpoint | None,
        hooks: Sequence[EpochHook],
        histogram: Callable[[], Any] | None,
        histogram_every: int,
    ):
        super().__init__()
        self.state = state
        self.early_stopping = early_stopping
        self.checkpoint = checkpoint
        self.hooks = hooks
        self.histogram = histogram
        self.histogram_every = histogram_every
        self.began = (time.time(), time.perf_counter())

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.began = (time.time(), time.perf_counter())

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        seconds = time.perf_counter() - self.began[1]
        logs = logs or {}
        row = {"epoch": epoch + 1}
        row.update({key: float(logs.get(key, float("nan"))) for key in HISTORY_COLUMNS[1:]})
        state = self.state
        state.epoch = epoch + 1
        state.history.append(row)
        if self.histogram is not None and state.epoch % self.histogram_every == 0:
            state.histograms[str(state.epoch)] = self.histogram()
        if self.early_stopping is not None:
            state.early_stopping = self.early_stopping.state()
            state.best_weights = self.early_stopping.best_weights
        if self.checkpoint is not None:
            self.checkpoint.save(self.model, state)
        timed = {**row, **dict(zip(EPOCH_TIMING, (seconds, self.began[0]), strict=True))}
        for hook in self.hooks:
            hook(state.epoch, timed)


def fit(
    model: keras.Model,
    train: tuple[Inputs, np.ndarray],
    validation: tuple[Inputs, np.ndarray],
    state: TrainingState | None = None,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    label: str,
    train_probe_size: int = 512,
    predict_batch_size: int = 512,
    calibration_bins: int = 15,
    sparsity_threshold: float = 1e-3,
    early_stopping: EarlyStopping | None = None,
    checkpoint: Checkpoint | None = None,
    hooks: Sequence[EpochHook] = (),
    histogram: Callable[[], Any] | None = None,
    histogram_every: int = 5,
) -> TrainingState:
    """Train a compiled model from ``state`` (a fresh one by default); return the new state.

    One ``model.fit`` call over :func:`epoch_batches`: epoch ``e`` sees the
    training images in ``epoch_order(seed, e)``, so the same seed gives the same
    batches whether or not the run was interrupted and resumed. A resumed state
    (``state.epoch > 0``) takes its weights from ``checkpoint``. ``histogram()``,
    if given, is recorded before training, every ``histogram_every`` epochs and
    at the end; ``hooks`` are called after every epoch's checkpoint.
    """
    state = state if state is not None else TrainingState()
    x_train, y_train = train
    x_val, y_val = validation
    probe = seeded_subset(x_train, y_train, train_probe_size, seed)
    start = state.epoch
    if start:
        if checkpoint is None:
            raise ValueError(f"{label}: resuming from epoch {start} needs the checkpoint")
        checkpoint.restore_model(model, start)
        log.info("%s: resuming from the checkpoint after epoch %d", label, start)
    elif histogram is not None:
        state.histograms["0"] = histogram()
    log.info(
        "training %s: %d train / %d validation images, epochs %d..%d, batch %d",
        label,
        len(x_train),
        len(x_val),
        start + 1,
        epochs,
        batch_size,
    )
    # A run killed after the epoch that stopped it early has nothing left to train.
    if start < epochs and not state.stopped_early:
        model.fit(
            epoch_batches(
                x_train, y_train, seed, range(start, epochs), batch_size, shuffle, num_classes
            ),
            initial_epoch=start,
            epochs=epochs,
            steps_per_epoch=math.ceil(len(x_train) / batch_size),
            shuffle=False,  # the order is epoch_order's
            callbacks=[
                LossDecomposition(
                    probe,
                    (x_val, y_val),
                    label,
                    predict_batch_size,
                    calibration_bins,
                    sparsity_threshold,
                ),  # fmt: skip
                *([early_stopping] if early_stopping is not None else []),
                _EpochEnd(state, early_stopping, checkpoint, hooks, histogram, histogram_every),
            ],
            verbose=0,
        )
    elif early_stopping is not None and early_stopping.restore_best_weights and state.best_weights:
        model.set_weights(state.best_weights)  # what Keras's on_train_end would have done
    if state.stopped_early:
        log.info("%s: early stopping after epoch %d", label, state.epoch)
    if histogram is not None and str(state.epoch) not in state.histograms:
        state.histograms[str(state.epoch)] = histogram()
    return state
