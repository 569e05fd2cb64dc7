"""A trial the scheduler stops ends its MLflow run there and then.

Ray stops a pruned trial's worker in the middle of ``train_variant``, so the
trial cannot end its own run; left open, the run would last until the search
ends and read as interrupted. Ray Tune calls a callback's ``on_trial_complete``
in the driver for every trial that ends without an error, a stopped one
included (``TuneController.stop_trial``): the run still open then is a pruned
trial's, and it ends FINISHED then, right after the epoch that stopped it. A
trial that ran to its end has closed its run itself before Ray hears of it.

Ray pickles a Tuner's callbacks with its experiment state and a restored search
runs the pickled ones, so the callback holds no client: it reads the address its
trials log to now from the search's state folder (``TRIAL_STORE_FILE``, written
by the search each time it starts: a served store's port can change on resume).

Imported only by :func:`reglab.tune.engine.run_ray` (it imports Ray).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.tune import Callback

from reglab.tracking.search import end_pruned_run


class EndPrunedRuns(Callback):
    def __init__(self, state_dir: Path, experiment_id: str, parent: str):
        self.state_dir = Path(state_dir)
        self.experiment_id = experiment_id
        self.parent = parent

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        end_pruned_run(self.state_dir, self.experiment_id, self.parent, trial.trial_id)
