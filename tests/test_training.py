"""Training: the data loss and the penalty kept apart, measured for real."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from reglab.evaluate.evaluation import expected_calibration_error
from reglab.evaluate.metrics import HISTORY_COLUMNS, cross_entropy, softmax
from reglab.train.checkpoint import TrainingState
from reglab.train.fit import (
    EarlyStopping,
    TrainingDiverged,
    compile_model,
    epoch_batches,
    epoch_order,
    make_optimizer,
    penalty,
    seed_everything,
)
from tests.conftest import digits_splits, fit_digits

L2 = 1e-3


def small_model(l2: float = L2, dropout_rate: float = 0.0) -> keras.Model:
    regularizer = keras.regularizers.L2(l2) if l2 else None
    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", kernel_regularizer=regularizer, name="dense_1"),
    ]
    if dropout_rate:
        layers.append(keras.layers.Dropout(dropout_rate))
    layers.append(keras.layers.Dense(10, kernel_regularizer=regularizer, name="logits"))
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def splits():
    return digits_splits()


def test_cross_entropy_matches_hand_computation():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    labels = np.array([0, 2])
    expected = np.mean([-np.log(np.exp(2) / (np.exp(2) + 2)), -np.log(1 / 3)])
    assert cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-12)


def test_penalty_is_the_sum_of_model_losses_computed_from_the_weights():
    seed_everything(0)
    model = small_model()
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    expected = sum(L2 * np.sum(np.square(kernel)) for kernel in kernels)
    assert penalty(model) == pytest.approx(expected, rel=1e-5)
    assert penalty(small_model(l2=0.0)) == 0.0


def test_history_keeps_data_loss_and_penalty_apart(splits):
    seed_everything(1)
    model = small_model(dropout_rate=0.3)
    compile_model(model, make_optimizer("adam", 1e-2))
    result = fit_digits(
        model, splits, seed=1, label="l2", epochs=3, train_probe_size=500, sparsity_threshold=0.05
    )
    assert result.epoch == 3 and len(result.history) == 3
    assert list(result.history[0]) == list(HISTORY_COLUMNS)
    last = result.history[-1]
    # The penalty is the weights' L2 penalty at the end of the epoch...
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    assert last["train_penalty"] == pytest.approx(
        sum(L2 * np.sum(np.square(k)) for k in kernels), rel=1e-5
    )
    # ...the total is data + penalty, and the data loss is plain cross-entropy (dropout off).
    assert last["train_total_loss"] == pytest.approx(
        last["train_data_loss"] + last["train_penalty"]
    )
    x_val, y_val = splits["val"]
    val_logits = model.predict(x_val, verbose=0)
    assert last["val_data_loss"] == pytest.approx(cross_entropy(val_logits, y_val), rel=1e-4)
    assert last["val_accuracy"] == pytest.approx(np.mean(val_logits.argmax(1) == y_val), abs=1e-6)
    assert last["penalty_share"] == pytest.approx(last["train_penalty"] / last["train_total_loss"])
    # What a search with two objectives trades: the validation calibration error (the
    # test set's formula, here 15 bins) and the share of kernel weights below 0.05.
    assert last["val_ece"] == pytest.approx(
        expected_calibration_error(softmax(val_logits), y_val, 15), abs=1e-5
    )
    assert last["val_ece"] > 0
    share = np.mean(np.abs(np.concatenate([k.ravel() for k in kernels])) < 0.05)
    assert last["sparsity"] == pytest.approx(share) and 0 < share < 1
    # Keras's own training-time total includes the penalty; it is kept under its own name.
    assert last["fit_total_loss"] > last["fit_data_loss"]
    # Learning happened: the digits are easy.
    assert last["val_accuracy"] > 0.8
    assert result.history[0]["train_data_loss"] > last["train_data_loss"]


def test_non_finite_loss_stops_at_once_naming_variant_and_epoch(splits):
    seed_everything(2)
    model = small_model(l2=0.0)
    compile_model(model, make_optimizer("sgd", 1e12))
    with pytest.raises(
        TrainingDiverged, match=r"variant exploding: the training loss became .* epoch 1;"
    ):
        fit_digits(model, splits, seed=2, label="exploding", epochs=5)


def test_weight_decay_means_adamw():
    assert isinstance(make_optimizer("adam", 1e-3, weight_decay=1e-4), keras.optimizers.AdamW)
    assert type(make_optimizer("adam", 1e-3)) is keras.optimizers.Adam


def test_early_stopping_stops_after_patience_and_restores_the_best_weights(splits):
    seed_everything(3)
    model = small_model()
    compile_model(model, make_optimizer("adam", 1e-2))
    weights_after, rows = {}, []

    def snapshot(epoch, row):
        weights_after[epoch] = [w.copy() for w in model.get_weights()]
        rows.append(dict(row))

    # min_delta larger than any change: epoch 1 is the best, and patience 2 stops after epoch 3.
    stopper = EarlyStopping("val_data_loss", 2, 100.0, restore_best_weights=True)
    result = fit_digits(
        model,
        splits,
        seed=3,
        label="stopper",
        epochs=10,
        hooks=[snapshot],
        early_stopping=stopper,
    )
    assert (result.epoch, result.stopped_early) == (3, True)
    # A hook gets the epoch's timing beside its history row; the history has no timing.
    began = [row.pop("epoch_began") for row in rows]
    seconds = [row.pop("epoch_seconds") for row in rows]
    assert rows == result.history
    assert all(0 < s < 60 for s in seconds)
    # An epoch begins after the one before it began and trained (clocks apart: 10 ms).
    assert all(
        then - before > spent - 0.01
        for before, then, spent in zip(began, began[1:], seconds, strict=False)
    )
    # Keras counts epochs from 0: the best is the first.
    assert result.early_stopping == {
        "wait": 2,
        "best": result.history[0]["val_data_loss"],
        "best_epoch": 0,
        "stopped_epoch": 2,
    }
    assert sorted(weights_after) == [1, 2, 3]
    assert not np.array_equal(weights_after[3][0], weights_after[1][0])
    for restored, best in zip(model.get_weights(), weights_after[1], strict=True):
        np.testing.assert_array_equal(restored, best)


@pytest.mark.parametrize(("monitor", "min_delta"), [("val_data_loss", 0.0), ("val_accuracy", 0.01)])
def test_the_kept_epoch_from_the_history_is_the_callbacks_best_epoch(splits, monitor, min_delta):
    """A search scores a trial at EarlyStoppingConfig.kept_index of its history rows: at
    every epoch, the epoch Keras's callback would restore."""
    from reglab.config.recipes import EarlyStoppingConfig

    seed_everything(5)
    model = small_model()
    compile_model(model, make_optimizer("adam", 5e-2))  # large steps: ups and downs
    stopper = EarlyStopping(monitor, 4, min_delta, restore_best_weights=True)
    best_epochs = []
    hook = lambda epoch, row: best_epochs.append(stopper.best_epoch)  # noqa: E731
    result = fit_digits(
        model, splits, seed=5, label="kept", epochs=8, hooks=[hook], early_stopping=stopper
    )
    rule = EarlyStoppingConfig(enabled=True, monitor=monitor, min_delta=min_delta, patience=4)
    kept = [rule.kept_index(result.history[:epoch]) for epoch in range(1, result.epoch + 1)]
    assert kept == best_epochs
    assert len(set(kept)) > 1  # the best moved at least once


def test_a_resumed_run_with_early_stopping_ends_like_an_uninterrupted_one(splits, tmp_path):
    from reglab.train.checkpoint import Checkpoint

    def fresh_model():
        keras.backend.clear_session()
        seed_everything(4)
        model = small_model(dropout_rate=0.3)
        compile_model(model, make_optimizer("adam", 1e-2))
        return model

    def stopper(state=None):
        state = state or TrainingState()
        return EarlyStopping(
            "val_data_loss", 2, 100.0, True, state.early_stopping, state.best_weights
        )

    straight_model = fresh_model()
    straight = fit_digits(
        straight_model, splits, seed=4, label="s", epochs=10, early_stopping=stopper()
    )
    written_for = {"config": "c1", "code": "k1", "data": "d1"}
    checkpoint = Checkpoint(tmp_path / "checkpoint", written_for)
    # The same run, stopped after epoch 2 (as by a kill) and resumed from its checkpoint.
    fit_digits(
        fresh_model(), splits, seed=4, label="r", epochs=2, early_stopping=stopper(),
        checkpoint=checkpoint,
    )  # fmt: skip
    state = checkpoint.load()
    assert state.epoch == 2 and state.early_stopping["wait"] == 1
    resumed_model = fresh_model()
    resumed = fit_digits(
        resumed_model, splits, seed=4, label="r", epochs=10, state=state,
        early_stopping=stopper(state), checkpoint=checkpoint,
    )  # fmt: skip
    assert resumed.epoch == straight.epoch == 3 and resumed.stopped_early
    assert resumed.history == straight.history
    assert resumed.early_stopping == straight.early_stopping
    for a, b in zip(resumed_model.get_weights(), straight_model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    # A checkpoint written for other code is not resumed from; it goes, its run id kept.
    state.run_id = "run-1"
    checkpoint.save(resumed_model, state)
    other_code = Checkpoint(tmp_path / "checkpoint", {**written_for, "code": "k2"})
    assert other_code.load() is None
    assert other_code.discarded_run_id == "run-1"
    assert not (tmp_path / "checkpoint").exists()


def test_epoch_batches_follow_each_epochs_order_and_never_straddle_epochs():
    x = np.arange(10, dtype=np.float32).reshape(10, 1)
    y = np.arange(10, dtype=np.float32) * 10
    batches = [
        (bx.numpy().ravel().astype(int).tolist(), by.numpy().astype(int).tolist())
        for bx, by in epoch_batches(x, y, seed=5, epochs=range(2, 4), batch_size=4, shuffle=True)
    ]
    # 10 images at batch 4: batches of 4, 4 and 2 in each epoch.
    assert [len(bx) for bx, _ in batches] == [4, 4, 2, 4, 4, 2]
    for epoch, chunk in zip((2, 3), (batches[:3], batches[3:]), strict=True):
        seen = [i for bx, _ in chunk for i in bx]
        assert seen == epoch_order(10, 5, epoch, True).tolist()
        assert all(by == [10 * i for i in bx] for bx, by in chunk)
    assert batches[0][0] != batches[3][0]
    unshuffled = [
        bx.numpy().ravel().astype(int).tolist()
        for bx, _ in epoch_batches(x, y, seed=5, epochs=range(1), batch_size=4, shuffle=False)
    ]
    assert unshuffled == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_epoch_batches_keep_tf_data_autotuning_off():
    # Its thread sleeps for its optimization period, and the end of model.fit waited
    # for it: up to 9 s after a search trial's last epoch (bench/README.md).
    x = np.arange(64, dtype=np.float32).reshape(64, 1)
    y = np.arange(64, dtype=np.float32)
    dataset = epoch_batches(x, y, seed=0, epochs=range(3), batch_size=8, shuffle=True)
    assert dataset.options().autotune.enabled is False
    assert sum(len(bx) for bx, _ in dataset) == 64 * 3
