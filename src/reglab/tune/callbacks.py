"""What the search's driver does when Ray starts or ends a trial (Ray Tune callbacks).

Ray pickles a Tuner's callbacks with its experiment state and a restored search
runs the pickled ones, so a callback holds no client or open file: it keeps
what it needs in the search's state folder.

Imported only by :func:`reglab.tune.engine.run_ray` (it imports Ray).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from reglab.core.io import write_atomic
from reglab.tracking.search import end_pruned_run

TRIAL_STARTS_FILE = "trial_starts.json"


class EndPrunedRuns(Callback):
    """A trial the scheduler stops ends its MLflow run there and then.

    Ray Tune calls ``on_trial_complete`` in the driver for every trial that ends
    without an error, a stopped one included (``TuneController.stop_trial``): the
    run still open then is a pruned trial's, and it ends FINISHED, tagged pruned,
    right after the epoch that stopped it. The address its trials log to now is
    read from the state folder (``TRIAL_STORE_FILE``, written each time the search
    starts: a served store's port can change on resume). A trial that ran to its end
    has closed its run itself before Ray hears of it.
    """

    def __init__(self, state_dir: Path, experiment_id: str, parent: str):
        self.state_dir = Path(state_dir)
        self.experiment_id = experiment_id
        self.parent = parent

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        end_pruned_run(self.state_dir, self.experiment_id, self.parent, trial.trial_id)


class TrialStarts(Callback):
    """When Ray started each trial (Unix time, every start of a trial resumed after a
    kill), in ``trial_starts.json`` of the state folder: with the time its first
    epoch began, that gives the trial's start latency (:func:`trial_starts`).

    Ray calls ``on_trial_start`` once it has a worker for the trial: a new one
    started, or one that ran an earlier trial and was reset for this one.
    """

    def __init__(self, state_dir: Path):
        self.file = Path(state_dir) / TRIAL_STARTS_FILE

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        starts = trial_starts(self.file.parent)
        starts.setdefault(trial.trial_id, []).append(time.time())
        write_atomic(self.file, json.dumps(starts, indent=1) + "\n")


def trial_starts(state_dir: Path) -> dict[str, list[float]]:
    """Every trial's start times, by Ray trial id (none yet: empty)."""
    file = Path(state_dir) / TRIAL_STARTS_FILE
    return json.loads(file.read_text()) if file.exists() else {}
