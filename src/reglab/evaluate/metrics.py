"""The numbers every stage agrees on: metric names and the loss from logits (NumPy only).

One home for what training, evaluation, tracking and the reports all name:
the per-epoch history columns and their MLflow names, the test metrics and
theirs, and the cross-entropy computed from logits.
"""

from __future__ import annotations

import numpy as np

# Per-epoch history: the columns of reports/history/<key>.csv, in order. The data
# loss is the cross-entropy alone (dropout off); the penalty is sum(model.losses).
# val_ece is the validation split's expected calibration error (evaluation.calibration_bins
# bins), sparsity the share of kernel weights below evaluation.sparsity_threshold: what
# a search with two objectives can trade against the data loss or the accuracy.
HISTORY_COLUMNS = (
    "epoch",
    "train_data_loss",
    "train_penalty",
    "train_total_loss",
    "train_accuracy",
    "val_data_loss",
    "val_accuracy",
    "val_ece",
    "val_total_loss",
    "val_penalty",
    "val_penalty_share",
    "penalty_share",
    "fit_total_loss",
    "fit_data_loss",
    "fit_accuracy",
    "sparsity",
)

# Beside its history row, the row an epoch hook gets (reglab.train.fit) has the epoch's
# own seconds (its batches, validation and loss decomposition; not the histograms,
# checkpoint or hooks after it) and when it began (Unix time). Not history columns:
# a history is the same whenever and wherever it was trained.
EPOCH_TIMING = ("epoch_seconds", "epoch_began")

# History column -> MLflow metric name (logged at step = epoch).
EPOCH_METRICS = {
    "train_data_loss": "train/data_loss",
    "train_penalty": "train/penalty",
    "train_total_loss": "train/total_loss",
    "train_accuracy": "train/accuracy",
    "penalty_share": "train/penalty_share",
    "val_data_loss": "val/data_loss",
    "val_total_loss": "val/total_loss",
    "val_accuracy": "val/accuracy",
    "val_ece": "val/ece",
    "val_penalty": "val/penalty",
    "val_penalty_share": "val/penalty_share",
    "fit_total_loss": "train/fit_total_loss",
    "fit_data_loss": "train/fit_data_loss",
    "fit_accuracy": "train/fit_accuracy",
    # All kernels at once; weights/<layer>/sparsity is each layer's (reglab.tracking).
    "sparsity": "weights/sparsity",
}

# Eval report key -> MLflow metric name (logged once, by the evaluate stage).
TEST_METRICS = {
    "test_accuracy": "test/accuracy",
    "test_data_loss": "test/data_loss",
    "ece": "test/ece",
    "generalization_gap": "test/generalization_gap",
    "data_loss_gap": "test/data_loss_gap",
    "train_accuracy": "eval/train_accuracy",
    "train_data_loss": "eval/train_data_loss",
    "sparsity": "weights/kernel_sparsity",
}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-probabilities (float64, so large logits do not overflow)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean categorical cross-entropy of integer ``labels`` under ``logits``; no penalty."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("cannot compute a loss on an empty split")
    return float(-log_softmax(logits)[np.arange(len(labels)), labels].mean())


def accuracy(predicted: np.ndarray, labels: np.ndarray) -> float:
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("cannot compute an accuracy on an empty split")
    return float(np.mean(predicted == labels))
