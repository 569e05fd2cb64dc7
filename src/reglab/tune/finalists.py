"""The likely best of a search, not the luckiest trial: its finalists over several seeds.

One trial is one draw of the seed noise: among strengths that train alike within
noise, the single best trial is a coin toss. So the best ``tune.finalists``
completed trials are trained again under ``tune.repeats`` further seeds
(:func:`repeat_seeds`), on Ray like the trials but never pruned, and the best is
the finalist with the best mean objective over its seeds. Its difference from the
runner-up is tested over the seeds both were trained under (paired: the same seed
gives the same initial weights and batch order), with the t-test the pipeline's
comparison uses (:func:`reglab.report.stats.compare_to_baseline`).

Neither Optuna nor Ray Tune does this inside a pruned search: Ray's ``Repeater``
repeats every trial and its docs advise against an early-stopping scheduler, and
Optuna has no notion of repeated seeds (optuna/optuna#433, #4124).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reglab.config.schema import Config
from reglab.report.stats import ALPHA, Stat, compare_to_baseline
from reglab.tune.outcome import Trial, ranked_completed


@dataclass
class Repeat:
    """A finalist trained again under another seed."""

    trial: int  # the number of the trial it repeats
    seed: int
    objective: float
    epochs: int
    state: str  # completed or failed
    mlflow_run_id: str | None = None
    error: str | None = None
    epoch_seconds: float = 0.0  # as a Trial's
    start_latency_s: float = math.nan


@dataclass
class Finalist:
    trial: Trial
    # The objective under each seed trained to the end: a completed trial's own seed
    # first, then its repeats'.
    values: dict[int, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return Stat.of(list(self.values.values())).mean if self.values else math.nan

    @property
    def std(self) -> float | None:
        return Stat.of(list(self.values.values())).std if self.values else None

    def summary(self) -> dict[str, Any]:
        return {
            "trial": self.trial.number,
            "trial_state": self.trial.state,  # completed, or pruned: scored on its repeats
            "params": self.trial.params,
            "mean": self.mean,
            "std": self.std,
            "seeds": list(self.values),
            "values": list(self.values.values()),
        }


def repeat_seeds(config: Config) -> list[int]:
    """The further seeds of the repeats: the trials' seed (the pipeline's first) + 1, + 2..."""
    return [config.seeds[0] + k for k in range(1, config.tune.repeats + 1)]


def pick_finalists(trials: Sequence[Trial], mode: str, count: int, repeats: int) -> list[Trial]:
    """The best ``count`` completed trials with a finite objective, best first; with
    repeats, places left (ASHA often lets only one or two trials run to the end) go to
    the pruned trials that trained the most epochs, the best at that epoch first.

    A pruned finalist is scored on its repeats alone: its own seed's value is from
    fewer epochs than the final model trains (:func:`rank`)."""
    chosen = ranked_completed(list(trials), mode)[:count]
    if repeats and len(chosen) < count:
        sign = 1.0 if mode == "min" else -1.0
        pruned = [t for t in trials if t.state == "pruned" and math.isfinite(t.objective)]
        pruned.sort(key=lambda t: (-t.epochs, sign * t.objective, t.number))
        chosen += pruned[: count - len(chosen)]
    return chosen


def rank(
    finalists: Sequence[Trial], repeats: Sequence[Repeat], seed: int, mode: str
) -> list[Finalist]:
    """The finalists with their objective under every seed trained to the end (a
    completed trial's own ``seed`` and its repeats'; a pruned one's repeats), best mean
    first. A finalist whose repeat failed (or did not score) is ranked after every
    finalist that did."""
    sign = 1.0 if mode == "min" else -1.0
    ranked = []
    for trial in finalists:
        finalist = Finalist(trial, {seed: trial.objective} if trial.state == "completed" else {})
        for repeat in sorted((r for r in repeats if r.trial == trial.number), key=lambda r: r.seed):
            finalist.values[repeat.seed] = (
                repeat.objective if repeat.state == "completed" else math.nan
            )
        ranked.append(finalist)

    def order(finalist: Finalist) -> tuple[bool, float, int]:
        scored = math.isfinite(finalist.mean)
        return (not scored, sign * finalist.mean if scored else 0.0, finalist.trial.number)

    return sorted(ranked, key=order)


def difference(best: Finalist, runner_up: Finalist | None) -> dict[str, Any] | None:
    """The runner-up minus the best over their shared seeds: mean, 95 % interval,
    p-value, and whether it is within noise (p >= 0.05; null without a noise estimate)."""
    if runner_up is None:
        return None
    delta = compare_to_baseline(runner_up.values, best.values)
    within = None if delta.p_value is None else bool(delta.p_value >= ALPHA)
    return {
        "runner_up_minus_best": delta.difference,
        "test": delta.test,
        "seeds": delta.n,
        "ci95": None if delta.ci_low is None else [delta.ci_low, delta.ci_high],
        "p_value": delta.p_value,
        "within_noise": within,
    }
