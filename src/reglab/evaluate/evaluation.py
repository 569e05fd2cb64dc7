"""Test-set evaluation of one trained variant: metrics, confusion matrix, calibration.

The metric functions take plain NumPy arrays (logits, labels) so they can be
checked against hand-computed values without a model. :func:`evaluate_model`
runs a model over the splits once and derives every number from those logits,
always in inference mode (dropout off), and never adds the regularization
penalty: the reports compare *data* loss, the quantity a penalty is meant to
improve on unseen data.

Results are identified by a run key, ``<variant>@<seed>`` (:mod:`reglab.config.paths`),
which names the model folder, the history CSV, the eval report and the weights file.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix

from reglab.config.paths import RunKey, RunKeyError
from reglab.core.errors import ReglabError
from reglab.core.io import read_json_object, write_atomic
from reglab.data.inputs import ModelInputs, as_inputs
from reglab.evaluate.metrics import accuracy, cross_entropy, softmax
from reglab.model import weights

log = logging.getLogger(__name__)

RUN_INFO_KEYS = ("variant", "seed", "epochs_trained", "params_count")


class EvaluationError(ReglabError):
    """An input of the evaluate stage is missing or malformed."""


# ---------------------------------------------------------------------------
# Metric functions on plain arrays.


def per_class_accuracy(confusion: np.ndarray) -> list[float | None]:
    """Recall of each class (diagonal / row sum); None for a class absent from the labels."""
    support = confusion.sum(axis=1)
    return [
        float(confusion[index, index] / count) if count else None
        for index, count in enumerate(support)
    ]


def reliability(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> dict[str, list[float | int | None]]:
    """Per equal-width confidence bin: mean confidence, accuracy and sample count.

    Confidence is the top-class probability. Bin ``b`` (0-based) holds confidences
    in ``(b / bins, (b + 1) / bins]``; the top bin is closed at 1. Empty bins get
    None for confidence and accuracy.
    """
    if bins < 1:
        raise ValueError(f"bins={bins}: must be >= 1")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    confidence_sum = np.bincount(index, weights=confidence, minlength=bins)
    correct_sum = np.bincount(index, weights=correct.astype(np.float64), minlength=bins)
    mean_confidence = [
        float(s / c) if c else None for s, c in zip(confidence_sum, counts, strict=True)
    ]
    mean_accuracy = [float(s / c) if c else None for s, c in zip(correct_sum, counts, strict=True)]
    return {
        "bin_upper_edges": [float(b + 1) / bins for b in range(bins)],
        "confidence": mean_confidence,
        "accuracy": mean_accuracy,
        "count": [int(c) for c in counts],
    }


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
) -> float:
    """ECE = sum over bins of (share of samples in the bin) * |accuracy - mean confidence|.

    Equal-width bins as in :func:`reliability` (Guo et al., 2017).
    """
    table = reliability(probabilities, labels, bins)
    total = sum(table["count"])
    if total == 0:
        raise EvaluationError("cannot compute a calibration error on an empty split")
    ece = 0.0
    for count, conf, acc in zip(
        table["count"], table["confidence"], table["accuracy"], strict=True
    ):
        if count:
            ece += count / total * abs(acc - conf)
    return float(ece)


def split_metrics(
    logits: np.ndarray, labels: np.ndarray, num_classes: int, calibration_bins: int
) -> dict[str, Any]:
    """Every metric of one split, from its logits."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise EvaluationError("cannot evaluate an empty split; re-run preprocess")
    predicted = np.asarray(logits).argmax(axis=1)
    # Rows = actual class, columns = predicted; every class has its row, seen or not.
    confusion = confusion_matrix(labels, predicted, labels=range(num_classes))
    probabilities = softmax(logits)
    return {
        "accuracy": accuracy(predicted, labels),
        "data_loss": cross_entropy(logits, labels),
        "ece": expected_calibration_error(probabilities, labels, calibration_bins),
        "confusion_matrix": confusion,
        "per_class_accuracy": per_class_accuracy(confusion),
        "reliability": reliability(probabilities, labels, calibration_bins),
        "predicted": predicted,
    }


# ---------------------------------------------------------------------------
# Model-level evaluation.


def read_run_info(path: Path) -> dict[str, Any]:
    """The train stage's run.json, checked for the keys evaluation relies on."""
    return read_json_object(
        path, RUN_INFO_KEYS, EvaluationError, "the train stage for this variant"
    )


def load_model(path: Path) -> Any:
    """Load a saved variant; safe_mode stays on because our regularizers are registered."""
    if not path.exists():
        raise EvaluationError(f"{path}: not found; run the train stage for this variant first")
    import keras

    import reglab.model.regularizers  # noqa: F401 - registers the custom serializable regularizers

    return keras.saving.load_model(path, safe_mode=True)


def predict_logits(model: Any, images: np.ndarray | ModelInputs, batch_size: int) -> np.ndarray:
    """Logits in inference mode (dropout off), a batch at a time.

    Each batch is read (and scaled) from ``images`` on its own, so a memory-mapped
    split is never read whole; ``predict_on_batch`` runs the same compiled
    function on the same batches as ``model.predict(images, batch_size)``.
    """
    inputs = as_inputs(images)
    if not len(inputs):
        return np.zeros((0, 0))
    return np.concatenate(
        [
            np.asarray(model.predict_on_batch(batch), dtype=np.float64)
            for batch in inputs.batches(batch_size)
        ]
    )


@dataclass
class Evaluation:
    """A JSON-ready report, the per-image test predictions behind its confusion matrix, and
    what the compare stage plots of the weights: the first-layer kernel
    (:func:`reglab.model.weights.kernel_record`) and the largest Dense kernel's counts on fixed
    bins (:func:`reglab.model.weights.dense_histogram_record`), not its values."""

    report: dict[str, Any]
    test_labels: np.ndarray
    test_predicted: np.ndarray
    first_layer: dict[str, Any]
    largest_dense: dict[str, Any] | None = None


def evaluate_model(
    model: Any,
    test: tuple[np.ndarray | ModelInputs, np.ndarray],
    train: tuple[np.ndarray | ModelInputs, np.ndarray],
    *,
    class_names: Sequence[str],
    batch_size: int,
    calibration_bins: int,
    sparsity_threshold: float,
) -> Evaluation:
    """Test metrics plus the train-vs-test gaps, as plain values.

    The train split is measured with the same inference-mode forward pass as the
    test split, so the gap reflects generalization and not dropout being on
    during Keras's training-time averages.
    """
    test_x, test_y = test
    train_x, train_y = train
    num_classes = len(class_names)
    on_test = split_metrics(
        predict_logits(model, test_x, batch_size), test_y, num_classes, calibration_bins
    )
    on_train = split_metrics(
        predict_logits(model, train_x, batch_size), train_y, num_classes, calibration_bins
    )
    report = {
        "test_accuracy": on_test["accuracy"],
        "test_data_loss": on_test["data_loss"],
        "ece": on_test["ece"],
        "train_accuracy": on_train["accuracy"],
        "train_data_loss": on_train["data_loss"],
        "generalization_gap": on_train["accuracy"] - on_test["accuracy"],
        "data_loss_gap": on_test["data_loss"] - on_train["data_loss"],
        "sparsity": weights.overall_sparsity(model, sparsity_threshold),
        "sparsity_threshold": sparsity_threshold,
        "per_class_accuracy": dict(zip(class_names, on_test["per_class_accuracy"], strict=True)),
        "confusion_matrix": on_test["confusion_matrix"].tolist(),
        "class_names": list(class_names),
        "reliability": on_test["reliability"],
        "test_samples": int(len(test_y)),
        "train_samples": int(len(train_y)),
    }
    try:
        first_layer = weights.kernel_record(*weights.first_layer_kernel(model))
    except ValueError as error:
        raise EvaluationError(f"{error}: nothing for the weight histograms") from None
    try:
        largest_dense = weights.dense_histogram_record(*weights.largest_dense_kernel(model))
    except ValueError:
        largest_dense = None  # a model without Dense layers: the first layer only
    return Evaluation(report, np.asarray(test_y), on_test["predicted"], first_layer, largest_dense)


def evaluate_variant(
    model_dir: Path,
    splits: Mapping[str, tuple[np.ndarray | ModelInputs, np.ndarray]],
    *,
    class_names: Sequence[str],
    batch_size: int,
    calibration_bins: int,
    sparsity_threshold: float,
) -> Evaluation:
    """Evaluate ``<model_dir>/model.keras`` (``model_dir`` named by its run key) and put the
    facts from ``run.json`` first, in the report and in the first-layer record."""
    info = read_run_info(model_dir / "run.json")
    try:
        variant, seed = RunKey.parse(model_dir.name)
    except RunKeyError as error:
        raise EvaluationError(f"{model_dir}: {error}") from None
    if info["variant"] != variant or int(info["seed"]) != seed:
        raise EvaluationError(
            f"{model_dir / 'run.json'}: holds variant {info['variant']!r} seed {info['seed']}, "
            f"which does not match its folder {model_dir.name!r}; re-run the train stage"
        )
    for split in ("train", "test"):
        if split not in splits:
            raise EvaluationError(f"the processed data has no {split!r} split; re-run preprocess")
    model = load_model(model_dir / "model.keras")
    result = evaluate_model(
        model,
        splits["test"],
        splits["train"],
        class_names=class_names,
        batch_size=batch_size,
        calibration_bins=calibration_bins,
        sparsity_threshold=sparsity_threshold,
    )
    facts = {
        "variant": info["variant"],
        "seed": int(info["seed"]),
        "epochs_trained": int(info["epochs_trained"]),
        "params_count": int(info["params_count"]),
    }
    result.report = {**facts, **result.report}
    result.first_layer = {"variant": facts["variant"], "seed": facts["seed"], **result.first_layer}
    report = result.report
    log.info(
        "%s: test accuracy %.4f, test data loss %.4f, gap %.4f, ECE %.4f, sparsity %.3f",
        model_dir.name,
        report["test_accuracy"],
        report["test_data_loss"],
        report["generalization_gap"],
        report["ece"],
        report["sparsity"],
    )
    return result


# ---------------------------------------------------------------------------
# Outputs: the eval JSON, the DVC confusion-plot CSV, the weights JSON.


def report_json(report: Mapping[str, Any]) -> str:
    """The report as JSON text; NaN is refused because it is not valid JSON."""
    return json.dumps(dict(report), indent=2, allow_nan=False) + "\n"


# What DVC reads as metrics: the numbers a user compares across experiments. The
# rest of the report (per-class accuracy, the confusion matrix, the run id) would
# make `dvc metrics show` and `dvc exp show` hundreds of columns wide.
HEADLINE_METRICS = (
    "test_accuracy",
    "test_data_loss",
    "ece",
    "generalization_gap",
    "data_loss_gap",
    "sparsity",
    "epochs_trained",
)


def headline_metrics(report: Mapping[str, Any]) -> dict[str, Any]:
    return {name: report[name] for name in HEADLINE_METRICS if name in report}


def write_outputs(
    result: Evaluation,
    report_path: Path,
    confusion_path: Path,
    weights_path: Path,
    metrics_path: Path | None = None,
) -> None:
    """The eval JSON (the full report), the headline metrics JSON (DVC metrics), the
    per-image CSV (DVC confusion plot) and the weights JSON (the compare stage's
    histograms: the first layer's values, the largest Dense kernel's counts), each
    atomically."""
    write_atomic(report_path, report_json(result.report))
    if metrics_path is not None:
        write_atomic(metrics_path, report_json(headline_metrics(result.report)))
    labels, predicted = result.test_labels, result.test_predicted
    write_atomic(confusion_path, confusion_csv(labels, predicted, result.report["class_names"]))
    weights_record = dict(result.first_layer)
    if result.largest_dense is not None:
        weights_record["largest_dense"] = result.largest_dense
    write_atomic(weights_path, json.dumps(weights_record, allow_nan=False) + "\n")
    log.info("wrote %s, %s and %s", report_path, confusion_path, weights_path)


def confusion_csv(labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> str:
    """One row per test image, ``actual,predicted`` class names: DVC's confusion template input."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("actual", "predicted"))
    writer.writerows(
        (class_names[a], class_names[p]) for a, p in zip(labels, predicted, strict=True)
    )
    return buffer.getvalue()
