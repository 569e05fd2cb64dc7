"""What a search produces: its trials, the best of them, how many it runs."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reglab.config.schema import BEST_SUFFIX, SearchConfig, TuneConfig
from reglab.core.errors import ReglabError


class SearchFailed(ReglabError):
    """No trial of the search completed."""


@dataclass
class Trial:
    number: int
    trial_id: str
    params: dict[str, Any]
    objective: float
    epochs: int
    state: str  # completed, pruned or failed
    mlflow_run_id: str | None = None
    error: str | None = None
    # The objective each epoch reported (epoch i at index i - 1).
    intermediate: list[float] = field(default_factory=list)
    # The seconds of the epochs it trained (not those reported again after a kill),
    # and from Ray starting it (its last start) to its first epoch beginning.
    epoch_seconds: float = 0.0
    start_latency_s: float = math.nan
    # Each objective at the weights it keeps (the first is ``objective``).
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class SearchOutcome:
    name: str
    search: SearchConfig
    trials: list[Trial]
    best: Trial  # the finalist with the best mean objective over its seeds
    parent_run_id: str
    # reglab.tune.finalists.Finalist, best mean first; Repeat, one per (finalist, seed).
    finalists: list[Any] = field(default_factory=list)
    repeats: list[Any] = field(default_factory=list)
    single_best: Trial | None = None  # the best trial of one seed, before the repeats
    # A multi-objective search's Pareto front (its non-dominated completed trials), by
    # its first objective; empty for one objective.
    front: list[Trial] = field(default_factory=list)


def best_variant_name(name: str) -> str:
    return f"{name}{BEST_SUFFIX}"


def n_trials(search: SearchConfig, tune: TuneConfig) -> int:
    if tune.sampler == "grid":
        return math.prod(len(spec.choices or ()) for spec in search.params)
    return tune.n_trials if tune.n_trials is not None else search.n_trials


def ranked_completed(trials: list[Trial], mode: str) -> list[Trial]:
    """The completed trials with a finite objective, best first (ties: lower number)."""
    completed = [t for t in trials if t.state == "completed" and math.isfinite(t.objective)]
    sign = 1.0 if mode == "min" else -1.0
    return sorted(completed, key=lambda t: (sign * t.objective, t.number))


def best_trial(trials: list[Trial], mode: str) -> Trial:
    ranked = ranked_completed(trials, mode)
    if not ranked:
        states = {t.trial_id: t.error or t.state for t in trials}
        raise SearchFailed(f"no trial completed: {states}")
    return ranked[0]
