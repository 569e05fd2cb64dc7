"""A search's outputs: best.yaml, trials.csv and the figures, each written atomically."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from reglab.config.schema import SearchConfig
from reglab.core.io import write_atomic
from reglab.report.search_figures import figures
from reglab.tune.best import BEST_FILE

TRIALS_FILE = "trials.csv"
FIGURES_DIR = "figures"


def write_outputs(outcome: Any, directory: Path) -> None:
    """best.yaml (the best parameters), trials.csv (one row per trial) and the figures."""
    best = outcome.best
    write_atomic(
        directory / BEST_FILE,
        yaml.safe_dump(
            {
                "search": outcome.name,
                "objective": outcome.search.objective,
                "value": best.objective,
                "trial": best.number,
                "trial_id": best.trial_id,
                "epochs": best.epochs,
                "mlflow_run_id": best.mlflow_run_id,
                "params": best.params,
            },
            sort_keys=False,
        ),
    )
    write_atomic(directory / TRIALS_FILE, trials_csv(outcome.trials, outcome.search))
    figures(outcome.trials, outcome.search, directory / FIGURES_DIR)


def trials_csv(trials: Sequence[Any], search: SearchConfig) -> str:
    """One row per trial: its parameters, objective (at its best epoch), epochs run, state."""
    keys = [spec.key for spec in search.params]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", *keys, "objective", "epochs", "state", "trial_id", "run_id"])
    for trial in trials:
        writer.writerow(
            [
                trial.number,
                *(trial.params[key] for key in keys),
                repr(trial.objective) if math.isfinite(trial.objective) else "",
                trial.epochs,
                trial.state,
                trial.trial_id,
                trial.mlflow_run_id or "",
            ]
        )
    return buffer.getvalue()
