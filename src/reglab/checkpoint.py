"""The training state after each epoch, saved so a killed run resumes where it stopped.

:class:`TrainingState` is everything a run needs to go on: the epoch reached,
the history so far, the early-stopping state with its best weights, the kernel
histograms taken so far and the MLflow run id. It is loaded once, when a
variant starts (:meth:`Checkpoint.load`), passed into ``training.fit`` and
returned by it; a checkpoint written for another config is discarded.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reglab.io import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


@dataclass
class TrainingState:
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    # keras EarlyStopping's own attributes (wait, best, best_epoch, stopped_epoch).
    early_stopping: dict[str, Any] | None = None
    best_weights: list[np.ndarray] | None = None
    # Kernel histograms by epoch ("0", "5", ...): counts and edges per layer.
    histograms: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def stopped_early(self) -> bool:
        return bool(self.early_stopping and self.early_stopping.get("stopped_epoch", 0) > 0)


class Checkpoint:
    """A folder holding the last epoch's weights (optimizer and random-layer seeds
    included), the best weights and the rest of the :class:`TrainingState`.

    Every file of an epoch is written before ``state.json`` is replaced
    atomically: a kill during a save leaves the previous complete checkpoint.
    """

    def __init__(self, directory: str | Path, fingerprint: Mapping[str, str]):
        self.directory = Path(directory)
        # What the training depends on, by part: {"config": ..., "code": ..., "data": ...}.
        self.fingerprint = dict(fingerprint)
        # The MLflow run of a checkpoint that load() discarded: it will never finish.
        self.discarded_run_id: str | None = None

    def load(self) -> TrainingState | None:
        """The saved state if it was written for the same config, code and data;
        else None, and the folder goes (its run id kept in ``discarded_run_id``)."""
        state_file = self.directory / STATE_FILE
        if not state_file.exists():
            return None
        saved = json.loads(state_file.read_text())
        written_for = saved.pop("fingerprint", None) or {}
        changed = [
            part for part in self.fingerprint if written_for.get(part) != self.fingerprint[part]
        ]
        if changed:
            log.warning(
                "starting over: the checkpoint in %s was written for another %s",
                self.directory,
                " and ".join(changed),
            )
            self.discarded_run_id = saved.get("run_id")
            self.clear()
            return None
        state = TrainingState(**saved)
        best_file = self._file("best", state.epoch, "npz")
        if best_file.exists():
            with np.load(best_file) as arrays:
                state.best_weights = [arrays[f"arr_{index}"] for index in range(len(arrays.files))]
        return state

    def save(self, model: Any, state: TrainingState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch = state.epoch
        model.save_weights(self._file("epoch", epoch, "weights.h5"))
        # save_weights leaves out the random layers' seed states; without them a
        # resumed run would draw other dropout masks than an uninterrupted one.
        np.savez(self._file("seeds", epoch, "npz"), *[v.numpy() for v in seed_states(model)])
        if state.best_weights is not None:
            np.savez(self._file("best", epoch, "npz"), *state.best_weights)
        record = {key: value for key, value in asdict(state).items() if key != "best_weights"}
        write_atomic(
            self.directory / STATE_FILE, json.dumps({**record, "fingerprint": self.fingerprint})
        )
        for stale in self.directory.iterdir():  # the commit point is passed: older epochs go
            if (
                stale.name.startswith(("epoch-", "best-", "seeds-"))
                and f"-{epoch}." not in stale.name
            ):
                stale.unlink()

    def restore_model(self, model: Any, epoch: int) -> None:
        """Weights, optimizer state and random-layer seeds as they were after ``epoch``."""
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(self._file("epoch", epoch, "weights.h5"))
        with np.load(self._file("seeds", epoch, "npz")) as saved:
            for index, variable in enumerate(seed_states(model)):
                variable.assign(saved[f"arr_{index}"])

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _file(self, kind: str, epoch: int, suffix: str) -> Path:
        return self.directory / f"{kind}-{epoch}.{suffix}"


def seed_states(model: Any) -> list[Any]:
    """The seed generators' state variables: in ``variables`` but not in ``weights``."""
    weights = {id(variable) for variable in model.weights}
    return [variable for variable in model.variables if id(variable) not in weights]
