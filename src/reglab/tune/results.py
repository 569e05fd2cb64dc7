"""A search's outputs: best.yaml, trials.csv, the figures and the study, each written
atomically, and logged to the search's MLflow run."""

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
from reglab.report.optuna_study import write_study_views
from reglab.report.search_figures import figures
from reglab.tune.best import BEST_FILE
from reglab.tune.finalists import difference

TRIALS_FILE = "trials.csv"
FIGURES_DIR = "figures"


def write_outputs(outcome: Any, directory: Path, tracking_uri: str | None = None) -> None:
    """best.yaml (the best parameters), trials.csv (one row per trial), the figures, and
    the trials as an Optuna study (study.db) with Optuna's own figures; with a
    ``tracking_uri`` (the config's), each also logged to the search's MLflow run."""
    record = yaml.dump(best_record(outcome), Dumper=_PlainDumper, sort_keys=False)
    write_atomic(directory / BEST_FILE, record)
    write_atomic(directory / TRIALS_FILE, trials_csv(outcome.trials, outcome.search))
    figures(outcome.trials, outcome.search, directory / FIGURES_DIR)
    write_study_views(outcome.name, outcome.search, outcome.trials, directory)
    if tracking_uri is not None:
        from reglab.tracking import resolve_uri
        from reglab.tracking.search import log_search_outputs

        log_search_outputs(resolve_uri(tracking_uri), outcome.parent_run_id, directory)


class _PlainDumper(yaml.SafeDumper):
    """YAML without anchors and aliases: best.yaml repeats the best's params and seeds
    in its finalists, and a reader sees each written out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def best_record(outcome: Any) -> dict[str, Any]:
    """What best.yaml holds: the best parameters and its objective over its seeds (``value``
    is the mean); the finalists, the runner-up and whether the best is ahead of it by
    more than the seed noise; the single best trial before the repeats."""
    best = outcome.best
    finalists = [finalist.summary() for finalist in outcome.finalists]
    top = finalists[0] if finalists else None
    runner_up = outcome.finalists[1] if len(outcome.finalists) > 1 else None
    single = outcome.single_best or best
    front = {}
    if outcome.search.multi:
        # Several objectives: the best by the first, and the whole front to choose from.
        front = {
            "objectives": dict(best.values),
            "pareto_front": [
                {"trial": t.number, "params": t.params, "values": dict(t.values)}
                for t in outcome.front
            ],
        }
    return {
        "search": outcome.name,
        "objective": outcome.search.objective,
        "value": top["mean"] if top else best.objective,
        "std": top["std"] if top else None,
        "seeds": top["seeds"] if top else [],
        "values": top["values"] if top else [best.objective],
        "trial": best.number,
        "trial_id": best.trial_id,
        "epochs": best.epochs,
        "mlflow_run_id": best.mlflow_run_id,
        "params": best.params,
        "single_best_trial": single.number,
        "runner_up": finalists[1] if runner_up else None,
        "difference": difference(outcome.finalists[0], runner_up) if runner_up else None,
        "finalists": finalists,
        **front,
    }


# A trial's seconds of training and its start latency (reglab.tune.outcome.Trial).
TIMING_COLUMNS = ("epoch_seconds", "start_latency_s")


def trials_csv(trials: Sequence[Any], search: SearchConfig) -> str:
    """One row per trial: its parameters, objective (at the weights it keeps), epochs run,
    state, ids and timing."""
    keys = [spec.key for spec in search.params]
    # Several objectives: each in its own column too (``objective`` is the first).
    others = search.objectives if search.multi else []
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["trial", *keys, "objective", *others, "epochs", "state", "trial_id", "run_id",
         *TIMING_COLUMNS]
    )  # fmt: skip
    for trial in trials:
        writer.writerow(
            [
                trial.number,
                *(trial.params[key] for key in keys),
                _number(trial.objective),
                *(_number(trial.values.get(name, math.nan)) for name in others),
                trial.epochs,
                trial.state,
                trial.trial_id,
                trial.mlflow_run_id or "",
                f"{trial.epoch_seconds:.3f}",
                f"{trial.start_latency_s:.3f}" if math.isfinite(trial.start_latency_s) else "",
            ]
        )
    return buffer.getvalue()


def _number(value: float) -> str:
    return repr(value) if math.isfinite(value) else ""
