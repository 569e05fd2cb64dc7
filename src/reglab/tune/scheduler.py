"""ASHA that a resumed search gives back the results of its finished trials.

Ray Tune saves a search's trials and its searcher with the experiment state,
but not the scheduler: ``Tuner.restore`` brings back the scheduler as it was
made, with empty rungs, and the trials restored as finished report nothing
more. A resumed search would judge every later trial against rungs without
the earlier ones, and stop (or keep) different trials than the same search
uninterrupted. Here each trial restored as finished replays its stored results
into the rungs when it is added, so the rungs are what they were at the kill.

Imported only by :func:`reglab.tune.engine.run_ray` (it imports Ray).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.result import EXPR_RESULT_FILE
from ray.tune.schedulers import ASHAScheduler

log = logging.getLogger(__name__)


def stored_results(trial: Trial) -> list[dict[str, Any]]:
    """The results Ray stored for ``trial`` (its result.json, one JSON object a line)."""
    path = Path(trial.path, EXPR_RESULT_FILE)
    if not path.exists():
        log.warning("trial %s: no stored results at %s", trial.trial_id, path)
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ResumableASHA(ASHAScheduler):
    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if trial.status in (Trial.TERMINATED, Trial.ERROR):  # restored, already ended
            for result in stored_results(trial):
                self.on_trial_result(tune_controller, trial, result)
