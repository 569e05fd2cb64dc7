"""Metric functions checked against values computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from reglab import evaluation
from reglab.evaluation import (
    EvaluationError,
    accuracy,
    confusion_matrix,
    data_loss_from_logits,
    expected_calibration_error,
    parse_run_key,
    per_class_accuracy,
    reliability,
    run_key,
)


def test_accuracy_counts_matches():
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75


def test_confusion_matrix_rows_are_actual_columns_are_predicted():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    confusion = confusion_matrix(labels, predicted, num_classes=3)
    assert confusion.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    # Class 0: 1 of 2 right, class 1: 1 of 1, class 2: 2 of 3.
    assert per_class_accuracy(confusion) == pytest.approx([0.5, 1.0, 2 / 3])


def test_per_class_accuracy_is_none_for_an_absent_class():
    confusion = confusion_matrix(np.array([0, 0]), np.array([0, 1]), num_classes=3)
    assert per_class_accuracy(confusion) == [0.5, None, None]


def test_data_loss_from_logits_is_mean_cross_entropy():
    # p(label) = 1/2 for equal logits, 3/4 for logits (ln 3, 0).
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    labels = np.array([0, 0])
    expected = (math.log(2.0) - math.log(0.75)) / 2
    assert data_loss_from_logits(logits, labels) == pytest.approx(expected, rel=1e-12)


def test_data_loss_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert data_loss_from_logits(logits, np.array([0, 0])) == pytest.approx(500.0)


def test_ece_on_a_small_known_example():
    # Two bins: (0, 0.5] and (0.5, 1].
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],  # confidence 0.9, predicts 0, label 0: right
            [0.8, 0.1, 0.1],  # confidence 0.8, predicts 0, label 1: wrong
            [0.4, 0.35, 0.25],  # confidence 0.4, predicts 0, label 0: right
            [0.3, 0.25, 0.45],  # confidence 0.45, predicts 2, label 0: wrong
        ]
    )
    labels = np.array([0, 1, 0, 0])
    # Low bin: accuracy 1/2, confidence 0.425; high bin: accuracy 1/2, confidence 0.85.
    expected = 0.5 * abs(0.5 - 0.425) + 0.5 * abs(0.5 - 0.85)
    assert expected_calibration_error(probabilities, labels, bins=2) == pytest.approx(expected)
    table = reliability(probabilities, labels, bins=2)
    assert table["count"] == [2, 2]
    assert table["confidence"] == pytest.approx([0.425, 0.85])
    assert table["accuracy"] == pytest.approx([0.5, 0.5])


def test_ece_is_zero_when_confidence_matches_accuracy_and_bin_edges_are_right_closed():
    # Confidence 0.5 sits in the lower of two bins: (0, 0.5].
    probabilities = np.array([[0.5, 0.5], [0.5, 0.5]])
    labels = np.array([0, 1])
    table = reliability(probabilities, labels, bins=2)
    assert table["count"] == [2, 0]
    assert table["confidence"][1] is None
    assert expected_calibration_error(probabilities, labels, bins=2) == pytest.approx(0.0)


def test_run_keys_round_trip():
    assert run_key("l2") == "l2"
    assert run_key("l1_l2", 7) == "l1_l2@7"
    assert parse_run_key("l1_l2@7") == ("l1_l2", 7)
    assert parse_run_key("dropout") == ("dropout", None)
    with pytest.raises(EvaluationError, match="integer seed"):
        parse_run_key("l2@x")


class _FakeModel:
    """Returns fixed logits; stands in for a Keras model in evaluate_model."""

    def __init__(self, logits_by_size):
        self.logits_by_size = logits_by_size
        self.layers = []

    def predict(self, images, batch_size, verbose):
        return self.logits_by_size[len(images)]


def test_evaluate_model_gaps_and_report_keys():
    test_logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])  # last one wrong
    train_logits = np.array([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])  # all right
    model = _FakeModel({3: test_logits, 4: train_logits})
    result = evaluation.evaluate_model(
        model,
        (np.zeros((3, 2, 2, 1)), np.array([0, 1, 1])),
        (np.zeros((4, 2, 2, 1)), np.array([0, 1, 0, 1])),
        class_names=["a", "b"],
        calibration_bins=4,
    )
    report = result.report
    assert report["test_accuracy"] == pytest.approx(2 / 3)
    assert report["train_accuracy"] == 1.0
    assert report["generalization_gap"] == pytest.approx(1 / 3)
    test_loss = data_loss_from_logits(test_logits, np.array([0, 1, 1]))
    train_loss = data_loss_from_logits(train_logits, np.array([0, 1, 0, 1]))
    assert report["test_data_loss"] == pytest.approx(test_loss)
    assert report["data_loss_gap"] == pytest.approx(test_loss - train_loss)
    assert report["confusion_matrix"] == [[1, 0], [1, 1]]
    assert report["per_class_accuracy"] == {"a": 1.0, "b": 0.5}
    assert report["sparsity"] == 0.0  # no kernels at all
    assert result.test_predicted.tolist() == [0, 1, 0]
    json.loads(evaluation.report_json(report))  # plain JSON, no NumPy types


def test_confusion_csv_has_one_row_per_image_with_class_names():
    text = evaluation.confusion_csv(np.array([0, 1]), np.array([1, 1]), ["T-shirt/top", "a,b"])
    assert text.splitlines() == ["actual,predicted", 'T-shirt/top,"a,b"', '"a,b","a,b"']


def test_mlflow_metric_names_are_sanitized_per_class():
    report = {
        "test_accuracy": 0.9,
        "test_data_loss": 0.3,
        "ece": 0.02,
        "generalization_gap": 0.05,
        "data_loss_gap": 0.1,
        "train_accuracy": 0.95,
        "train_data_loss": 0.2,
        "sparsity": 0.01,
        "per_class_accuracy": {"T-shirt/top": 0.8, "Ankle boot": 0.97, "Bag": None},
    }
    metrics = evaluation.mlflow_metrics(report)
    assert metrics["test/class_accuracy/t-shirt_top"] == 0.8
    assert metrics["test/class_accuracy/ankle_boot"] == 0.97
    assert "test/class_accuracy/bag" not in metrics
    assert metrics["test/accuracy"] == 0.9 and metrics["test/data_loss"] == 0.3


def test_read_run_info_names_missing_keys(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"variant": "l2", "seed": 1}))
    with pytest.raises(EvaluationError, match="mlflow_run_id"):
        evaluation.read_run_info(path)
    with pytest.raises(EvaluationError, match="not found"):
        evaluation.read_run_info(tmp_path / "missing.json")
