"""A search's figures: the objective against each parameter, and the optimization history
(of several objectives, the first: the Pareto front is Optuna's figure, optuna_study)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reglab.config.schema import SearchConfig

STATE_COLORS = {"completed": "tab:blue", "pruned": "tab:gray", "failed": "tab:red"}


def figures(trials: Sequence[Any], search: SearchConfig, directory: Path) -> list[Path]:
    """The objective against each parameter (log axis for log ranges), and the history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    scored = [t for t in trials if math.isfinite(t.objective)]
    written = []
    for spec in search.params:
        figure, axis = plt.subplots(figsize=(5, 3.5))
        for state, color in STATE_COLORS.items():
            points = [t for t in scored if t.state == state]
            axis.scatter(
                [float(t.params[spec.key]) for t in points],
                [t.objective for t in points],
                c=color,
                label=state,
                s=25,
            )
        if spec.choices is None and spec.log:
            axis.set_xscale("log")
        axis.set_xlabel(spec.key)
        axis.set_ylabel(f"{search.primary} (kept weights)")
        axis.legend(fontsize=8)
        figure.tight_layout()
        written.append(_save(figure, directory / f"objective_vs_{spec.key}.png"))
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for state, color in STATE_COLORS.items():
        points = [t for t in scored if t.state == state]
        axis.scatter(
            [t.number for t in points], [t.objective for t in points], c=color, label=state
        )
    pick = min if search.mode == "min" else max
    running, best = [], None
    for trial in sorted(scored, key=lambda t: t.number):
        if trial.state == "completed":
            best = trial.objective if best is None else pick(best, trial.objective)
        if best is not None:
            running.append((trial.number, best))
    if running:
        axis.step(*zip(*running, strict=True), where="post", color="black", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel(search.primary)
    axis.set_title("optimization history")
    axis.legend(fontsize=8)
    figure.tight_layout()
    written.append(_save(figure, directory / "optimization_history.png"))
    return written


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100, metadata={"Software": None})
    tmp.replace(path)
    plt.close(figure)
    return path
