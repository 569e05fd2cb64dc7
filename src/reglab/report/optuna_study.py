"""A search's trials in Optuna's own views: a study file optuna-dashboard opens
(``optuna-dashboard sqlite:///<directory>/study.db``) and Optuna's matplotlib figures.

The search itself runs under Ray Tune, whose Optuna sampler keeps no study on disk;
the study is rebuilt here from the trials the search reports, one Optuna trial per
reglab trial, in trial order (so Optuna's trial numbers are reglab's).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from reglab.config.schema import SearchConfig
from reglab.core.io import atomic_path, remove_leftovers

logger = logging.getLogger(__name__)

STUDY_FILE = "study.db"
FIGURES_DIR = "figures"
HISTORY = "optuna_history.png"
IMPORTANCE = "optuna_importance.png"
PARALLEL = "optuna_parallel.png"
SLICE = "optuna_slice.png"
INTERMEDIATE = "optuna_intermediate.png"
PARETO = "optuna_pareto_front.png"
STATES = {"completed": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


def write_study_views(
    name: str, search: SearchConfig, trials: Sequence[Any], directory: Path
) -> list[Path]:
    """Write ``directory/study.db`` (study ``name``) and Optuna's figures of it under
    ``directory/figures/``; return the paths written.

    ``trials`` are ``reglab.tune.outcome.Trial``s. An existing study.db is replaced,
    never appended to; a figure that cannot be drawn from these trials is skipped with
    a log line and its file from an earlier run removed.
    """
    import optuna

    directory = Path(directory)
    with _quiet_views():
        study_path = _write_study(name, search, trials, directory / STUDY_FILE)
        storage = optuna.storages.RDBStorage(_sqlite_url(study_path))
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            figures = _figures(name, study, search, directory / FIGURES_DIR)
        finally:
            storage.engine.dispose()
    return [study_path, *figures]


def _write_study(name: str, search: SearchConfig, trials: Sequence[Any], path: Path) -> Path:
    """The study in a new sqlite file beside ``path``, renamed onto it when complete."""
    import optuna

    remove_leftovers(path)
    for journal in path.parent.glob(f".{path.name}.*.tmp-journal"):  # sqlite's, of a kill
        journal.unlink(missing_ok=True)
    with atomic_path(path) as temporary:
        storage = optuna.storages.RDBStorage(_sqlite_url(temporary))
        try:
            study = _study(name, search, trials, storage)
            study.set_user_attr("objective", search.objective)
        finally:
            storage.engine.dispose()
    return path


def _study(name: str | None, search: SearchConfig, trials: Sequence[Any], storage: Any) -> Any:
    """An Optuna study of ``trials`` (in memory where ``storage`` is None), one direction
    per objective."""
    import optuna

    directions = ["minimize" if mode == "min" else "maximize" for mode in search.modes]
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    distributions = distributions_of(search)
    for trial in sorted(trials, key=lambda t: t.number):
        study.add_trial(_frozen_trial(trial, distributions, search.objectives))
    return study


def pareto_front(search: SearchConfig, trials: Sequence[Any]) -> list[Any]:
    """The completed trials no other completed trial beats on every objective (Optuna's
    ``Study.best_trials`` of a multi-objective study), best first by the first objective."""
    with _quiet_views():
        study = _study(None, search, trials, None)
        numbers = {frozen.user_attrs["reglab_trial"] for frozen in study.best_trials}
    sign = 1.0 if search.mode == "min" else -1.0
    front = [trial for trial in trials if trial.number in numbers]
    return sorted(front, key=lambda t: (sign * t.values[search.primary], t.number))


def distributions_of(search: SearchConfig) -> dict[str, Any]:
    """The search space as Optuna distributions (the searcher's, and the study's)."""
    import optuna

    return {
        spec.key: optuna.distributions.CategoricalDistribution(list(spec.choices))
        if spec.choices is not None
        else optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)
        for spec in search.params
    }


def _frozen_trial(trial: Any, distributions: dict[str, Any], objectives: Sequence[str]) -> Any:
    """The Optuna trial of a reglab trial: its value (one objective) or values (several)."""
    import optuna

    unknown = sorted(set(trial.params) - set(distributions))
    if unknown:
        raise ValueError(
            f"trial {trial.number} has parameters {unknown} outside the search space "
            f"{sorted(distributions)}: pass the search config the trials were run with"
        )
    state = STATES[trial.state]
    # One objective: the trial's objective; several: each at the weights it keeps.
    values = (
        [trial.objective]
        if len(objectives) == 1
        else [trial.values.get(name, math.nan) for name in objectives]
    )
    # Optuna fails a trial whose objective is NaN; values are kept only where each is one.
    if state == "COMPLETE" and any(math.isnan(value) for value in values):
        state = "FAIL"
    kept = None if state == "FAIL" or any(math.isnan(value) for value in values) else values
    attrs = {"reglab_trial": trial.number, "trial_id": trial.trial_id, "epochs": trial.epochs}
    if trial.mlflow_run_id:
        attrs["mlflow_run_id"] = trial.mlflow_run_id
    if trial.error:
        attrs["error"] = trial.error
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[state],
        values=kept,
        params=dict(trial.params),
        distributions={key: distributions[key] for key in trial.params},
        user_attrs=attrs,
        # Optuna's step is the epoch (epoch i is at index i - 1 of the list).
        intermediate_values={
            epoch: float(objective) for epoch, objective in enumerate(trial.intermediate, start=1)
        },
    )


def _figures(name: str, study: Any, search: SearchConfig, directory: Path) -> list[Path]:
    """Each figure Optuna can draw from the study's trials; the others skipped, named."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as views

    completed = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if all(math.isfinite(value) for value in t.values)
    ]
    stepped = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.intermediate_values
    ]
    none_completed = "no trial completed" if not completed else None
    # Of several objectives, the views of one number show the first (the one the best
    # is picked by), and the Pareto front shows them all.
    on: dict[str, Any] = {"target_name": search.primary}
    if search.multi:
        on["target"] = _first_value
    plots: list[tuple[str, str | None, Callable[[], Any]]] = [
        (HISTORY, none_completed, lambda: views.plot_optimization_history(study, **on)),
        (
            IMPORTANCE,
            _importance_skipped(completed, search),
            lambda: views.plot_param_importances(study, evaluator=_fanova(search.seed), **on),
        ),
        (PARALLEL, none_completed, lambda: views.plot_parallel_coordinate(study, **on)),
        (SLICE, none_completed, lambda: views.plot_slice(study, **on)),
        (
            INTERMEDIATE,
            None if stepped else "no completed or stopped trial reported a value per epoch",
            lambda: views.plot_intermediate_values(study),
        ),
    ]
    if search.multi:
        plots.append(
            (
                PARETO,
                none_completed,
                lambda: views.plot_pareto_front(study, target_names=search.objectives),
            )
        )
    written = []
    for file_name, reason, plot in plots:
        path = directory / file_name
        remove_leftovers(path)
        if reason is not None:
            path.unlink(missing_ok=True)
            logger.info("%s: %s skipped: %s", name, file_name, reason)
            continue
        written.append(_save(plot, path))
    return written


def _first_value(trial: Any) -> float:
    return trial.values[0]


def _fanova(seed: int) -> Any:
    """Optuna's default importance evaluator, seeded: the same trials give the same
    importances. Imported only when drawn (it imports scikit-learn, seconds here)."""
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=seed)


def _importance_skipped(completed: list[Any], search: SearchConfig) -> str | None:
    """Why fANOVA cannot rank the parameters from these completed trials, or None."""
    if len(completed) < 2:
        return f"needs two completed trials, {len(completed)} completed"
    if not any(
        len({repr(t.params.get(spec.key)) for t in completed}) > 1 for spec in search.params
    ):
        return "no parameter varies over the completed trials"
    if len({t.values[0] for t in completed}) < 2:
        return "the objective is the same in every completed trial"
    return None


def _save(plot: Callable[[], Any], path: Path) -> Path:
    import matplotlib
    import matplotlib.pyplot as plt
    import numpy as np

    # Optuna's plots switch pyplot to the ggplot style sheet; the context undoes it,
    # so figures drawn later in the process keep the project's look.
    with matplotlib.rc_context():
        axes = plot()
        figure = np.ravel(axes)[0].figure
        try:
            with atomic_path(path) as temporary:
                # Tight: the parallel plot's slanted axis names reach below its canvas.
                figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight",
                               metadata={"Software": None})  # fmt: skip
        finally:
            plt.close(figure)
    return path


def _sqlite_url(path: Path) -> str:
    """SQLAlchemy's URL of a sqlite file; it quotes what a URL would read otherwise
    (a '%', '?' or '#' in the path)."""
    from sqlalchemy.engine import URL

    return URL.create("sqlite", database=str(path)).render_as_string(hide_password=False)


@contextlib.contextmanager
def _quiet_views() -> Iterator[None]:
    """Optuna's notices ("A new study created ...") and its experimental-feature warnings
    for the matplotlib views left out, and matplotlib's notices about the slice plot's
    categorical axis of numbers and one trial's flat axis; real warnings still show."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    category = logging.getLogger("matplotlib.category")
    level = category.level
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    category.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
            # One completed trial is one point: matplotlib widens its flat axis itself.
            warnings.filterwarnings(
                "ignore", "Attempting to set identical low and high [xy]lims", UserWarning
            )
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)
        category.setLevel(level)
