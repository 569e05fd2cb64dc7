"""The Ray Tune run of a search: Ray connected, the Tuner made or restored, its results.

Why Ray Tune's own ``OptunaSearch``: it is Ray's maintained wiring of an
Optuna study (ask/tell, the seeded TPE sampler, saved and restored with Ray's
experiment state, so a killed search resumes with its study), it works with
the lock's ray 2.60 and optuna 5.0, and it leaves stopping to Ray's ASHA
scheduler, which stops a trial wherever it runs. Hydra's Optuna sweeper
(optuna < 3) cannot be used.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reglab.config.paths import run_key, run_record_file
from reglab.config.schema import Config, SearchConfig
from reglab.core.io import write_atomic
from reglab.model.imports import user_modules, user_packages
from reglab.tracking.search import STATE_TAG
from reglab.tune.finalists import Repeat
from reglab.tune.outcome import Trial, n_trials
from reglab.tune.trial import objective_key, run_repeat, run_trial, trial_dir, trial_epochs

log = logging.getLogger(__name__)


def _runtime_env(
    config: Config,
    trial_uri: str,
    worker_env: Mapping[str, str] | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """The trials' workers' environment, Ray's way to configure another process:
    ``worker_env`` (settings the entry layer hands on), then the search's own; and
    the interpreter, quoted where it must be (:func:`_worker_python`)."""
    threads = str(config.tune.threads_per_trial)
    return {
        **_worker_python(address),
        **_user_modules(config),
        "env_vars": {
            "TF_CPP_MIN_LOG_LEVEL": "2",
            **(worker_env or {}),
            # Read when TensorFlow is first imported in the worker.
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "MLFLOW_TRACKING_URI": trial_uri,
            "RAY_CHDIR_TO_TRIAL_DIR": "0",
            # How long Ray waits for a stopped trial's thread to end before its worker
            # takes the next trial (REUSE): past it, the next trial fails.
            "TUNE_FUNCTION_THREAD_TIMEOUT_S": str(stopped_trial_bound(config)),
            "PYTHONHASHSEED": "0",
        },
    }


# The requests a stopped trial's thread makes to the tracking store as it ends (its
# run's end, its pipeline parent read and moved: tracking.runs), each bounded by
# tracking.server_wait_s, and a minute for a starved CPU.
STOP_REQUESTS = 4
STOP_CPU_S = 60


def stopped_trial_bound(config: Config) -> int:
    """Seconds Ray waits for a stopped trial's thread to end before it fails the next
    trial of that worker (REUSE): the worst case of the thread's ending, not its usual
    second. Ray's 2 s, and later 30 s, failed trials: once under load with the default,
    once in a full-data search whose stopped trial took over 30 s to end on a
    machine running four trainings at once on two cores."""
    return int(STOP_REQUESTS * config.tracking.server_wait_s + STOP_CPU_S)


def _user_modules(config: Config) -> dict[str, list[str]]:
    """The user's model and regularizer packages (their top-level folders in the
    project folder), shipped to every worker with Ray's ``py_modules``, so a trial
    imports them on any node of a cluster, as the driver does."""
    recipes = [config.variant(name) for name in config.variants]
    modules = user_modules(config.model, recipes)
    packages = user_packages(modules, Path.cwd())
    return {"py_modules": [str(path.resolve()) for path in packages]} if packages else {}


def _worker_python(address: str | None) -> dict[str, str]:
    """Ray 2.60 starts a worker of a job with a runtime_env as ``bash -c "exec <python>
    <args>"``, the interpreter's path unquoted: with a venv in a folder whose name has a
    space ("my proj") no worker ever starts. Ray's ``py_executable`` is a shell command,
    so it gets the quoted path where the workers can run this very interpreter: a local
    instance, or a head on the loopback (every node of it is on this machine). A remote
    cluster's nodes keep their own interpreter."""
    quoted = shlex.quote(sys.executable)
    host = (address or "").rpartition(":")[0].strip("[]")
    on_this_machine = address is None or host in ("localhost", "::1") or host.startswith("127.")
    return {"py_executable": quoted} if quoted != sys.executable and on_this_machine else {}


def _sampler(search: SearchConfig, kind: str) -> Any:
    import optuna

    if kind == "grid":
        grid = {spec.key: list(spec.choices or ()) for spec in search.params}
        return optuna.samplers.GridSampler(grid, seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed)


# REUSE: a trial runs in a worker that ran earlier trials of the search, where one is
# free (Ray Tune's actor reuse): TensorFlow is imported once per worker, not once per
# trial, and the next trial starts in well under a second. Ray resets a worker for
# its next trial (FunctionTrainable.reset_config) once the last trial's thread has
# ended, waiting TUNE_FUNCTION_THREAD_TIMEOUT_S for it (set in _runtime_env), and
# fails the next trial past that ("Trainable runner reuse requires reset_config()").
# A stopped trial's thread is blocked in its report, since Ray reports a function
# trainable's results synchronously: Ray's reset wakes it with SystemExit(0), which
# ends its MLflow run FINISHED (tracking.runs.ending_run) and leaves train_variant.
# That takes about a second, but its requests to the tracking store are each bounded
# by tracking.server_wait_s only, and a starved CPU stretches it: the bound is the
# worst case (stopped_trial_bound), so a slow end delays the next trial, never fails it.
# Each trial builds its model after keras.backend.clear_session() and seeds every
# generator (train.run.prepare_model): a trial's numbers do not depend on the trials
# its worker ran before.

EXPERIMENT_FILE = "ray_experiment"


def experiment_name(state_dir: Path) -> str:
    """The search's Ray experiment name, made once per state folder and unique to it.

    Ray stages a driver's experiment files in <Ray session>/artifacts/<start time,
    to the second>/<experiment name>/ on the driver's machine before copying them to
    the state folder: two searches of one name started in the same second on one
    cluster would share that folder, and each could copy (and later resume) the
    other's trials and searcher state (ray-project/ray#35006).
    """
    import uuid

    remembered = state_dir / EXPERIMENT_FILE
    if not remembered.exists():
        remembered.write_text(f"ray-{uuid.uuid4().hex[:12]}")
    return remembered.read_text().strip()


@contextlib.contextmanager
def ray_connected(
    config: Config,
    address: str | None,
    trial_uri: str,
    worker_env: Mapping[str, str] | None = None,
) -> Iterator[None]:
    """Connected to the Ray head at ``address`` (None: a local instance) until the end.

    Ray's settings for the driver that it reads from the environment only (usage
    statistics, Ray Tune's console output) are the entry layer's to set.
    """
    import ray

    init: dict[str, Any] = {
        "runtime_env": _runtime_env(config, trial_uri, worker_env, address),
        "logging_level": logging.WARNING,
        "log_to_driver": False,
    }
    if address:
        init["address"] = address
    else:
        init.update(include_dashboard=False, num_cpus=os.cpu_count())
    ray.init(**init)
    try:
        yield
    finally:
        ray.shutdown()


def run_ray(
    config: Config,
    name: str,
    search: SearchConfig,
    state_dir: Path,
    parent: str,
    experiment_id: str,
) -> list[RayTrial]:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from reglab.report.optuna_study import distributions_of
    from reglab.tune.callbacks import EndPrunedRuns, TrialStarts
    from reglab.tune.scheduler import ResumableASHA

    epochs = trial_epochs(config, search)
    trainable = _trainable(run_trial, config, name=name, parent_run_id=parent)
    experiment = state_dir.resolve() / experiment_name(state_dir)
    if tune.Tuner.can_restore(str(experiment)):
        log.info("%s: resuming the stored search in %s", name, experiment)
        tuner = tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        grid = config.tune.sampler == "grid"
        # Several objectives: Optuna's multi-objective TPE is told each at the trial's
        # end (Ray's OptunaSearch with lists of metrics and modes), and every trial runs
        # all its epochs, since ASHA ranks trials on one number (FIFO, as a grid).
        metric: str | list[str] = "objective"
        mode: str | list[str] = search.mode
        if search.multi:
            metric, mode = [objective_key(name) for name in search.objectives], search.modes
        searcher = ConcurrencyLimiter(
            OptunaSearch(
                distributions_of(search),
                metric=metric,
                mode=mode,
                sampler=_sampler(search, config.tune.sampler),
            ),
            max_concurrent=config.tune.max_concurrent,
        )
        scheduler = ResumableASHA(
            time_attr="epoch",
            # One more than the trial's epochs: ASHA stops a trial that reaches
            # max_t, and a trial that ran all its epochs should end by itself.
            max_t=epochs + 1,
            grace_period=min(config.tune.grace_period, epochs),
            reduction_factor=config.tune.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # The searcher has the objectives; Ray's own metric is one or none.
                metric=None if search.multi else "objective",
                mode=None if search.multi else search.mode,
                search_alg=searcher,
                # A grid is a sweep: every point runs all its epochs.
                scheduler=FIFOScheduler() if grid or search.multi else scheduler,
                num_samples=n_trials(search, config.tune),
                reuse_actors=config.tune.reuse_workers,  # see REUSE
            ),
            run_config=_run_config(
                experiment,
                [
                    EndPrunedRuns(state_dir.resolve(), experiment_id, parent),
                    TrialStarts(state_dir.resolve()),
                ],
            ),
        )
    return own_results(tuner.fit())


@dataclass
class RayTrial:
    """One trial of a Ray Tune run: its id and creation index (from its folder), its own
    config, its last report and per-epoch reports, and its error."""

    trial_id: str
    index: int
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    metrics_dataframe: Any = None
    error: BaseException | None = None


def own_results(grid: Any) -> list[RayTrial]:
    """Each trial of a Ray ResultGrid with the config Ray made it with and only its own
    reports (see :func:`own_trials`)."""
    from ray.tune import ExperimentAnalysis

    configs = ExperimentAnalysis(grid.experiment_path).get_all_configs()
    return own_trials([grid[index] for index in range(len(grid))], configs)


def own_trials(results: list[Any], configs: Mapping[str, dict[str, Any]]) -> list[RayTrial]:
    """Ray results as RayTrials, ``configs`` the trials' own by trial id. A Result's config
    and metrics are its trial's last report, and a trial that never reported has, for
    one, what its worker's Trainable says of itself (Trial.last_result, from
    Trainable.get_auto_filled_metrics). For a trial that failed because its reused
    worker could not be reset for it, that is the previous trial's id and config: so the
    id comes from the trial's own folder, the config from Ray's experiment state, and a
    report of another trial's id is dropped."""
    made = []
    for result in results:
        trial_id, index = trial_dir(result.path)
        metrics = dict(result.metrics or {})
        if metrics.get("trial_id", trial_id) != trial_id:
            metrics = {}  # another trial's
        made.append(
            RayTrial(
                trial_id=trial_id,
                index=index,
                config=configs.get(trial_id) or metrics.get("config") or {},
                metrics=metrics,
                metrics_dataframe=result.metrics_dataframe,
                error=result.error,
            )
        )
    return made


def _trainable(function: Any, config: Config, **parameters: Any) -> Any:
    """``function`` as a Ray Tune trainable with ``parameters`` and a trial's resources."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(function, config=config, **parameters),
        {"cpu": config.tune.cpus_per_trial, "gpu": config.tune.gpus_per_trial},
    )


def _run_config(experiment: Path, callbacks: list[Any] | None = None) -> Any:
    """A Ray experiment in folder ``experiment``: a failed trial is not retried."""
    from ray import tune

    return tune.RunConfig(
        name=experiment.name,
        storage_path=str(experiment.parent),
        failure_config=tune.FailureConfig(max_failures=0),
        callbacks=callbacks,
        verbose=0,
    )


REPEATS_FILE = "repeats.json"


def run_repeats(
    config: Config,
    name: str,
    finalists: list[Trial],
    seeds: list[int],
    state_dir: Path,
) -> list[Repeat]:
    """Every finalist trained again under each of ``seeds``, on Ray like the trials:
    a grid of (trial, seed) with no scheduler (nothing is pruned), nested under the
    trials' runs. Its Ray state is kept beside the trials' (``<experiment>-repeats``):
    a search killed during its repeats resumes them; stored repeats of another set
    of finalists or seeds are dropped first."""
    import json
    import shutil

    from ray import tune

    from reglab.tune.callbacks import TrialStarts, trial_starts

    grid = [
        {"trial": trial.number, "seed": seed, "params": trial.params}
        for trial in finalists
        for seed in seeds
    ]
    if not grid:
        return []
    experiment = state_dir.resolve() / f"{experiment_name(state_dir)}-repeats"
    stored = state_dir / REPEATS_FILE
    planned = json.dumps(grid, sort_keys=True)
    if experiment.exists() and (not stored.exists() or stored.read_text() != planned):
        log.info("%s: the stored repeats were of other finalists; starting them again", name)
        shutil.rmtree(experiment)
    write_atomic(stored, planned)
    runs = {str(trial.number): trial.mlflow_run_id for trial in finalists}
    trainable = _trainable(run_repeat, config, name=name, trial_runs=runs)
    log.info(
        "%s: training the %d finalists again under seeds %s (%d runs)",
        name, len(finalists), seeds, len(grid),
    )  # fmt: skip
    if tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"repeat": tune.grid_search(grid)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=config.tune.max_concurrent,
                reuse_actors=config.tune.reuse_workers,  # REUSE
            ),
            run_config=_run_config(experiment, [TrialStarts(state_dir.resolve())]),
        )
    results = own_results(tuner.fit())
    starts = trial_starts(state_dir)
    repeats = []
    for result in results:
        planned_repeat = result.config["repeat"]
        metrics = result.metrics
        failed = result.error is not None
        trial, seed = int(planned_repeat["trial"]), int(planned_repeat["seed"])
        record = run_record_file(config.paths.runs, run_key(f"{name}-{trial}", seed))
        repeats.append(
            Repeat(
                trial=trial,
                seed=seed,
                objective=math.nan if failed else float(metrics.get("objective", math.nan)),
                epochs=int(metrics.get("epoch", 0) or 0),
                state="failed" if failed else "completed",
                mlflow_run_id=(
                    json.loads(record.read_text()).get("mlflow_run_id") if record.exists() else None
                ),
                error=_last_line(result.error),
            )
        )
        repeats[-1].epoch_seconds, repeats[-1].start_latency_s = timing(
            result, starts.get(result.trial_id, [])
        )
    return repeats


def collect(
    runs: Mapping[str, Any],
    search: SearchConfig,
    epochs_per_trial: int,
    results: list[RayTrial],
    starts: Mapping[str, list[float]],
) -> list[Trial]:
    """One Trial per Ray result, in the order Ray made them; the state from Ray and MLflow,
    the objective its last epoch reported (at the weights it keeps) and each epoch's,
    and its timing (``starts``: Ray's start times of each trial, :class:`TrialStarts`)."""
    made = []
    for result in results:
        metrics, trial_id = result.metrics, result.trial_id
        run = runs.get(trial_id)
        epochs = int(metrics.get("epoch", 0) or 0)
        if result.error is not None:
            state = "failed"
        elif epochs >= epochs_per_trial or (
            run is not None
            and run.info.status == "FINISHED"
            and run.data.tags.get(STATE_TAG) != "pruned"  # ended by EndPrunedRuns
        ):
            state = "completed"  # all its epochs, or stopped early by its own recipe
        else:
            state = "pruned"
        objective = float(metrics.get("objective", math.nan))
        values = {
            name: math.nan
            if state == "failed"
            else float(metrics.get(objective_key(name), math.nan))
            for name in search.objectives
        }
        trial = Trial(
            number=0,
            trial_id=trial_id,
            params={spec.key: _plain(result.config[spec.key]) for spec in search.params},
            objective=objective if state != "failed" else math.nan,
            epochs=epochs,
            state=state,
            mlflow_run_id=run.info.run_id if run else None,
            error=_last_line(result.error),
            intermediate=_per_epoch(result),
            values=values,
        )
        trial.epoch_seconds, trial.start_latency_s = timing(result, starts.get(trial_id, []))
        made.append((result.index, trial))
    trials = [trial for _, trial in sorted(made, key=lambda pair: pair[0])]
    for number, trial in enumerate(trials):
        trial.number = number
    return trials


def _per_epoch(result: Any) -> list[float]:
    """The objective each epoch reported, by epoch (a resumed trial reports its first
    epochs again: the last report of an epoch counts)."""
    frame = result.metrics_dataframe
    if frame is None or "objective" not in frame or "epoch" not in frame:
        return []
    by_epoch = {
        int(epoch): float(value)
        for epoch, value in zip(frame["epoch"], frame["objective"], strict=True)
    }
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def timing(result: Any, starts: list[float]) -> tuple[float, float]:
    """The seconds of the epochs a Ray result's trial trained, and its start latency:
    from Ray's last start of it to the first epoch that began after that start
    (NaN if it trained none then: a finished attempt reporting its epochs again)."""
    frame = result.metrics_dataframe
    if frame is None or "epoch_seconds" not in frame or "epoch_began" not in frame:
        return 0.0, math.nan
    seconds = float(frame["epoch_seconds"].fillna(0.0).sum())
    if not starts:
        return seconds, math.nan
    last = max(starts)
    began = frame["epoch_began"].dropna()
    began = began[began >= last]
    return seconds, float(began.min() - last) if len(began) else math.nan


def _last_line(error: BaseException | None) -> str | None:
    """Ray wraps a trial's exception in its traceback; the last line is the cause."""
    if error is None:
        return None
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _plain(value: Any) -> Any:
    """NumPy scalars from Optuna become plain Python values (for YAML and MLflow)."""
    return value.item() if hasattr(value, "item") else value
