"""Evaluation checked against values computed by hand, on arrays and a stand-in model."""

from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest

from reglab.evaluate import evaluation
from reglab.evaluate.evaluation import (
    EvaluationError,
    expected_calibration_error,
    per_class_accuracy,
    reliability,
    split_metrics,
)


def test_split_metrics_confusion_rows_are_actual_columns_are_predicted():
    labels = np.array([0, 0, 1, 2, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0, 2])
    metrics = split_metrics(np.eye(3)[predicted], labels, num_classes=3, calibration_bins=2)
    assert metrics["confusion_matrix"].tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # Class 0: 1 of 2 right, class 1: 1 of 1, class 2: 2 of 3.
    assert metrics["per_class_accuracy"] == pytest.approx([0.5, 1.0, 2 / 3])
    assert metrics["predicted"].tolist() == predicted.tolist()


def test_classes_absent_from_labels_and_predictions_keep_their_row_and_column():
    metrics = split_metrics(np.eye(4)[[0, 1]], np.array([0, 0]), num_classes=4, calibration_bins=2)
    assert metrics["confusion_matrix"].tolist() == [
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ]
    assert per_class_accuracy(metrics["confusion_matrix"]) == [0.5, None, None, None]


def test_split_data_loss_is_mean_cross_entropy_and_stable_for_huge_logits():
    # p(label) = 1/2 for equal logits, 3/4 for logits (ln 3, 0).
    logits = np.array([[0.0, 0.0], [math.log(3.0), 0.0]])
    expected = (math.log(2.0) - math.log(0.75)) / 2
    loss = split_metrics(logits, np.array([0, 0]), 2, 2)["data_loss"]
    assert loss == pytest.approx(expected, rel=1e-12)
    huge = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert split_metrics(huge, np.array([0, 0]), 2, 2)["data_loss"] == pytest.approx(500.0)
    with pytest.raises(EvaluationError, match="empty split"):
        split_metrics(np.zeros((0, 2)), np.array([], dtype=int), 2, 2)


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


class _Kernel:
    def __init__(self, values):
        self.values = values

    def numpy(self):
        return self.values


class _Layer:
    def __init__(self, name, kernel):
        self.name = name
        self.kernel = _Kernel(kernel)


class _FakeModel:
    """Returns fixed logits and has fixed kernels; stands in for a Keras model."""

    def __init__(self, logits_by_size, kernels):
        self.logits_by_size = logits_by_size
        self.layers = [_Layer(f"dense_{i}", kernel) for i, kernel in enumerate(kernels)]

    def predict_on_batch(self, images):
        return self.logits_by_size[len(images)]


def evaluate_fake():
    test_logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])  # last one wrong
    train_logits = np.array([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0], [0.0, 3.0]])  # all right
    first = np.array([[0.5, -0.0001], [0.25, 2.0]], dtype=np.float32)
    second = np.array([[0.0005], [-1.0]], dtype=np.float32)
    model = _FakeModel({3: test_logits, 4: train_logits}, [first, second])
    result = evaluation.evaluate_model(
        model,
        (np.zeros((3, 2, 2, 1)), np.array([0, 1, 1])),
        (np.zeros((4, 2, 2, 1)), np.array([0, 1, 0, 1])),
        class_names=['a,"b"', "c"],
        batch_size=8,
        calibration_bins=4,
        sparsity_threshold=1e-3,
    )
    return result, test_logits, train_logits, first


def test_evaluate_model_gaps_report_keys_and_first_layer():
    result, test_logits, train_logits, first = evaluate_fake()
    report = result.report
    assert report["test_accuracy"] == pytest.approx(2 / 3)
    assert report["train_accuracy"] == 1.0
    assert report["generalization_gap"] == pytest.approx(1 / 3)
    test_loss = split_metrics(test_logits, np.array([0, 1, 1]), 2, 4)["data_loss"]
    train_loss = split_metrics(train_logits, np.array([0, 1, 0, 1]), 2, 4)["data_loss"]
    assert test_loss == pytest.approx(
        math.log1p(math.exp(-2.0)) / 3 * 2 + math.log1p(math.exp(2.0)) / 3
    )
    assert report["test_data_loss"] == pytest.approx(test_loss)
    assert report["data_loss_gap"] == pytest.approx(test_loss - train_loss)
    assert report["confusion_matrix"] == [[1, 0], [1, 1]]
    assert report["per_class_accuracy"] == {'a,"b"': 1.0, "c": 0.5}
    # Kernels: 0.5, -0.0001, 0.25, 2.0, 0.0005, -1.0: two of six below 1e-3.
    assert report["sparsity"] == pytest.approx(2 / 6)
    assert report["sparsity_threshold"] == 1e-3
    assert result.test_predicted.tolist() == [0, 1, 0]
    assert json.loads(evaluation.report_json(report)) == report  # plain JSON, no NumPy types
    assert result.first_layer == {
        "layer": "dense_0/kernel",
        "shape": [2, 2],
        "values": [float(v) for v in first.ravel()],
    }


def test_the_metrics_file_holds_the_headline_numbers_only(tmp_path):
    result = evaluate_fake()[0]
    result.report["epochs_trained"] = 3
    paths = [tmp_path / "eval/a@1.json", tmp_path / "c/a@1.csv", tmp_path / "w/a@1.json"]
    evaluation.write_outputs(result, *paths, tmp_path / "metrics/a@1.json")
    metrics = json.loads((tmp_path / "metrics/a@1.json").read_text())
    assert list(metrics) == list(evaluation.HEADLINE_METRICS)
    assert metrics == {name: result.report[name] for name in evaluation.HEADLINE_METRICS}
    assert "confusion_matrix" in json.loads(paths[0].read_text())  # the full report


def test_write_outputs_writes_the_report_the_confusion_csv_and_the_weights(tmp_path):
    result = evaluate_fake()[0]
    paths = [tmp_path / "eval/a@1.json", tmp_path / "confusion/a@1.csv", tmp_path / "w/a@1.json"]
    evaluation.write_outputs(result, *paths)
    assert json.loads(paths[0].read_text()) == result.report
    with paths[1].open(newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["actual", "predicted"],
            ['a,"b"', 'a,"b"'],
            ["c", "c"],
            ["c", 'a,"b"'],
        ]
    weights = json.loads(paths[2].read_text())
    assert np.asarray(weights["values"], np.float32).reshape(weights["shape"]).tobytes() == (
        np.array([[0.5, -0.0001], [0.25, 2.0]], dtype=np.float32).tobytes()
    )
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == ["confusion/a@1.csv", "eval/a@1.json", "w/a@1.json"]  # no temporary left


def test_confusion_csv_quotes_a_comma_and_a_quote():
    text = evaluation.confusion_csv(np.array([0, 1]), np.array([1, 1]), ["T-shirt/top", 'a,"b"'])
    assert text == 'actual,predicted\nT-shirt/top,"a,""b"""\n"a,""b""","a,""b"""\n'
    assert list(csv.reader(io.StringIO(text))) == [
        ["actual", "predicted"],
        ["T-shirt/top", 'a,"b"'],
        ['a,"b"', 'a,"b"'],
    ]


def test_mlflow_metrics_use_the_shared_names_and_sanitize_class_names():
    report = {
        "test_accuracy": 0.9,
        "test_data_loss": 0.3,
        "ece": 0.02,
        "generalization_gap": 0.05,
        "data_loss_gap": float("nan"),
        "train_accuracy": 0.95,
        "train_data_loss": 0.2,
        "sparsity": 0.01,
        "per_class_accuracy": {"T-shirt/top": 0.8, "Ankle boot": 0.97, "Bag": None},
    }
    from reglab.tracking import mlflow_metrics

    assert mlflow_metrics(report) == {
        "test/accuracy": 0.9,
        "test/data_loss": 0.3,
        "test/ece": 0.02,
        "test/generalization_gap": 0.05,
        "eval/train_accuracy": 0.95,
        "eval/train_data_loss": 0.2,
        "weights/kernel_sparsity": 0.01,
        "test/class_accuracy/t-shirt_top": 0.8,
        "test/class_accuracy/ankle_boot": 0.97,
    }


def test_read_run_info_names_missing_keys(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"variant": "l2", "seed": 1}))
    with pytest.raises(EvaluationError, match="epochs_trained"):
        evaluation.read_run_info(path)
    with pytest.raises(EvaluationError, match="not found"):
        evaluation.read_run_info(tmp_path / "missing.json")
