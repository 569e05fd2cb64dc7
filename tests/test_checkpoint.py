"""The checkpoint: what it restores, and its commit point."""

from __future__ import annotations

import errno
import json

import keras
import numpy as np
import pytest

from reglab.core.io import WriteError
from reglab.train import checkpoint as checkpoint_module
from reglab.train.checkpoint import STATE_FILE, Checkpoint, TrainingState, checkpoint_variables
from reglab.train.fit import compile_model, make_optimizer, seed_everything
from tests.conftest import digits_splits, fit_digits

FINGERPRINT = {"config": "c", "code": "k", "data": "d"}


def dropout_model(seed: int) -> keras.Model:
    keras.backend.clear_session()
    seed_everything(seed)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(10),
        ]
    )
    compile_model(model, make_optimizer("adam", 1e-2))
    return model


def values(model: keras.Model) -> list[np.ndarray]:
    return [np.array(variable) for variable in checkpoint_variables(model)]


def test_a_checkpoint_restores_every_variable_bit_for_bit(tmp_path):
    trained = dropout_model(3)
    state = fit_digits(trained, digits_splits(), seed=3, label="t", epochs=2)
    checkpoint = Checkpoint(tmp_path / "checkpoint", FINGERPRINT)
    checkpoint.save(trained, state)
    saved = values(trained)
    # The next epoch changes the variables while (or after) the thread writes.
    for variable in trained.trainable_variables:
        variable.assign(variable + 1.0)
    loaded = checkpoint.load()
    assert loaded.epoch == 2 and loaded.history == state.history
    fresh = dropout_model(99)  # other initial weights and seed states
    checkpoint.restore_model(fresh, loaded.epoch)
    restored = values(fresh)
    assert len(restored) == len(saved) > len(fresh.weights)  # seed states and optimizer too
    for a, b in zip(restored, saved, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(np.array(fresh.optimizer.iterations)) == int(np.array(trained.optimizer.iterations))


def test_the_state_file_never_points_to_weights_still_being_written(tmp_path, monkeypatch):
    model = dropout_model(5)
    checkpoint = Checkpoint(tmp_path / "checkpoint", FINGERPRINT)
    checkpoint.save(model, TrainingState(epoch=1, history=[{"epoch": 1}]))
    first_weights = (tmp_path / "checkpoint" / "epoch-1.npz").read_bytes()
    state_file = tmp_path / "checkpoint" / STATE_FILE
    seen_mid_write = []
    savez = np.savez

    def observed_savez(path, *arrays):
        # Mid-write (as at a kill): the state is still epoch 1's, and its weights are whole.
        seen_mid_write.append(
            (
                json.loads(state_file.read_text())["epoch"],
                (tmp_path / "checkpoint" / "epoch-1.npz").read_bytes() == first_weights,
            )
        )
        savez(path, *arrays)

    monkeypatch.setattr(checkpoint_module.np, "savez", observed_savez)
    checkpoint.save(model, TrainingState(epoch=2, history=[{"epoch": 1}, {"epoch": 2}]))
    assert seen_mid_write == [(1, True)]
    assert json.loads(state_file.read_text())["epoch"] == 2
    assert sorted(path.name for path in (tmp_path / "checkpoint").iterdir()) == [
        "epoch-2.npz",
        STATE_FILE,
    ]


def test_a_failed_write_is_raised_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = dropout_model(6)
    checkpoint = Checkpoint(tmp_path / "checkpoint", FINGERPRINT)
    checkpoint.save(model, TrainingState(epoch=1, history=[{"epoch": 1}]))

    def full_disk(path, *arrays):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint_module.np, "savez", full_disk)
    with pytest.raises(WriteError, match="epoch-2.npz: No space left on device; free some disk"):
        checkpoint.save(model, TrainingState(epoch=2, history=[{"epoch": 1}, {"epoch": 2}]))
    monkeypatch.undo()
    state = Checkpoint(tmp_path / "checkpoint", FINGERPRINT).load()
    assert state.epoch == 1
    checkpoint.restore_model(dropout_model(6), state.epoch)  # its weights are whole
