"""Replay early-stopping rules on the trial curves of a kept search benchmark.

python -m bench.pruner_replay DIR [--label parallel]

DIR is a folder kept by ``python -m bench.tune_benchmark --keep DIR``. For the
search ``--label`` (its trials, in the order the search made them) this reads
each trial's per-epoch validation data loss from the benchmark's MLflow store,
and asks each rule below, one trial at a time, after every epoch, whether to
stop the trial, as the search would: the value given is the best so far, as
reglab's trials report it. It counts the epochs the whole search would spend,
the best loss it would see, and the epochs until it first came within 5 % of
the grid search's best.

The rules are the libraries' own code, not copies: Ray Tune's ASHA bracket
(``ray.tune.schedulers.async_hyperband._Bracket``, the class
``ASHAScheduler`` decides with) and Optuna's pruners (``MedianPruner``,
``PercentilePruner``, ``SuccessiveHalvingPruner``, ``HyperbandPruner``).

A trial the real search stopped has no curve past that epoch. A rule that
would train it longer gets the grid trial's curve with the nearest L2
strength, shifted by the mean difference over the epochs both have (the
grid's five trials ran every epoch); such rows are marked ``extrapolated``.
One trial at a time is the most a rule can know: with two concurrent trials
each decides with less, so these are what a serial search would spend.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from bench.tune_benchmark import WITHIN, store, trials_of


@dataclass
class Curve:
    strength: float
    losses: list[float]  # validation data loss per epoch, as far as the trial ran


@dataclass
class Outcome:
    epochs: int
    best: float
    to_reach: int | None
    extrapolated: bool


def curves(project: Path, label: str) -> list[Curve]:
    """The trials of one search, in trial order, with their epoch histories."""
    client = store(project)
    rows = sorted(trials_of(project, label), key=lambda row: int(row["trial"]))
    made = []
    for row in rows:
        history = client.get_metric_history(row["run_id"], "val/data_loss")
        losses = [metric.value for metric in sorted(history, key=lambda m: m.step)]
        made.append(Curve(float(row["kernel.l2"]), losses))
    return made


def extend(curve: Curve, grid: list[Curve], epochs: int) -> list[float]:
    """The trial's curve, continued to ``epochs`` by the nearest grid curve, shifted."""
    if len(curve.losses) >= epochs:
        return curve.losses[:epochs]
    near = min(grid, key=lambda g: abs(math.log10(g.strength) - math.log10(curve.strength)))
    shift = sum(a - b for a, b in zip(curve.losses, near.losses, strict=False)) / len(curve.losses)
    return curve.losses + [loss + shift for loss in near.losses[len(curve.losses) : epochs]]


# A rule: given every trial's curve (extended to all epochs), yields per trial the
# epochs it would run (it stops after the epoch where the rule says so).
Rule = Callable[[list[list[float]]], Iterator[int]]


def best_so_far(losses: list[float]) -> Iterator[tuple[int, float]]:
    best = math.inf
    for epoch, loss in enumerate(losses, start=1):
        best = min(best, loss)
        yield epoch, best


def ray_asha(grace_period: int, reduction_factor: int, epochs: int) -> Rule:
    from ray.tune.schedulers.async_hyperband import _Bracket

    def rule(full: list[list[float]]) -> Iterator[int]:
        # reglab's scheduler: max_t one past the trial's epochs (engine.run_ray).
        bracket = _Bracket(grace_period, epochs + 1, reduction_factor, s=0)
        for number, losses in enumerate(full):
            trial = SimpleNamespace(trial_id=str(number))  # all _Bracket reads of a trial
            ran = epochs
            for epoch, best in best_so_far(losses):
                if bracket.on_result(trial, epoch, -best) == "STOP":  # Ray maximises
                    ran = epoch
                    break
            yield ran

    return rule


def optuna_pruner(make: Callable[[], object]) -> Rule:
    import optuna

    def rule(full: list[list[float]]) -> Iterator[int]:
        study = optuna.create_study(direction="minimize", pruner=make())
        for losses in full:
            trial = study.ask()
            ran, value = len(losses), math.inf
            for epoch, best in best_so_far(losses):
                trial.report(best, epoch)
                value = best
                if trial.should_prune():
                    ran = epoch
                    break
            state = optuna.trial.TrialState
            if ran < len(losses):
                study.tell(trial, state=state.PRUNED)
            else:
                study.tell(trial, value, state=state.COMPLETE)
            yield ran

    return rule


def replay(rule: Rule, trials: list[Curve], grid: list[Curve], epochs: int) -> Outcome:
    full = [extend(trial, grid, epochs) for trial in trials]
    target = min(min(g.losses) for g in grid) * WITHIN
    spent, best, to_reach, extrapolated = 0, math.inf, None, False
    for trial, losses, ran in zip(trials, full, rule(full), strict=True):
        extrapolated |= ran > len(trial.losses)
        for loss in losses[:ran]:
            spent += 1
            best = min(best, loss)
            if to_reach is None and best <= target:
                to_reach = spent
    return Outcome(spent, best, to_reach, extrapolated)


def rules(epochs: int) -> dict[str, Rule]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pruners = optuna.pruners
    made: dict[str, Rule] = {}
    for reduction_factor in (2, 3, 4):
        for grace in (1, 2):
            made[f"Ray ASHA, grace {grace}, reduction factor {reduction_factor}"] = ray_asha(
                grace, reduction_factor, epochs
            )
    made.update(
        {
            "Optuna MedianPruner (1 startup trial)": optuna_pruner(
                lambda: pruners.MedianPruner(n_startup_trials=1)
            ),
            "Optuna MedianPruner (defaults)": optuna_pruner(pruners.MedianPruner),
            "Optuna PercentilePruner 25 % (1 startup trial)": optuna_pruner(
                lambda: pruners.PercentilePruner(25.0, n_startup_trials=1)
            ),
            "Optuna SuccessiveHalvingPruner (defaults)": optuna_pruner(
                pruners.SuccessiveHalvingPruner
            ),
        }
    )
    for reduction_factor, bootstrap in ((3, 1), (4, 1), (4, 0)):
        made[
            f"Optuna SuccessiveHalvingPruner, reduction factor {reduction_factor}, "
            f"bootstrap {bootstrap}"
        ] = optuna_pruner(
            lambda rf=reduction_factor, boot=bootstrap: pruners.SuccessiveHalvingPruner(
                min_resource=1, reduction_factor=rf, bootstrap_count=boot
            )
        )
    made["Optuna HyperbandPruner (min 1 epoch)"] = optuna_pruner(
        lambda: pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    )
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pruner_replay")
    parser.add_argument("project", type=Path, help="a folder kept by bench.tune_benchmark")
    parser.add_argument("--label", default="parallel", help="the search to replay")
    args = parser.parse_args(argv)
    grid = curves(args.project, "grid")
    trials = curves(args.project, args.label)
    epochs = max(len(g.losses) for g in grid)
    grid_epochs = sum(len(g.losses) for g in grid)
    grid_best = min(min(g.losses) for g in grid)
    print(
        f"{len(trials)} trials of {args.label!r}, up to {epochs} epochs; the grid: "
        f"{grid_epochs} epochs, best {grid_best:.4f} (within 5 %: {grid_best * WITHIN:.4f})"
    )
    print(f"{'rule':72s} {'epochs':>6s} {'of grid':>7s} {'best':>7s} {'to reach':>8s}")
    for name, rule in rules(epochs).items():
        outcome = replay(rule, trials, grid, epochs)
        print(
            f"{name:72s} {outcome.epochs:6d} {outcome.epochs / grid_epochs:7.2f} "
            f"{outcome.best:7.4f} {outcome.to_reach or '-':>8}"
            + ("  extrapolated" if outcome.extrapolated else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
