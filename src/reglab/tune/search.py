"""Run a search: Optuna's TPE suggests, Ray Tune runs the trials, ASHA stops the bad ones.

Each trial is :func:`reglab.runner.train_variant` on the search's base recipe
with the suggested values, nested under the search's MLflow parent run, with
one epoch hook that reports to Ray Tune: the same model builder, training loop,
loss decomposition and logging as a pipeline variant, on train and validation only.

Why Ray Tune's own ``OptunaSearch``: it is Ray's maintained wiring of an
Optuna study (ask/tell, the seeded TPE sampler, saved and restored with Ray's
experiment state, so a killed search resumes with its study), it works with
the lock's ray 2.60 and optuna 5.0, and it leaves stopping to Ray's ASHA
scheduler, which stops a trial wherever it runs. Hydra's Optuna sweeper
(optuna < 3) cannot be used.

Ray Tune keeps the experiment's state under ``paths.tune_state/<search>``: a
search started again after a kill restores it; finished trials are not re-run
and an interrupted trial resumes from its last epoch (train_variant's checkpoint).
Ray saves that state every 10 s or so and not the scheduler's: what happened
since is made good here. A trial is known by its number (Ray makes a lost one
again under a new id, with the same values in serial mode), a trial already
trained to the end reports its epochs again instead of training, and ASHA's
rungs get back the results of the trials restored as finished (scheduler.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reglab.config import BEST_SUFFIX, Config, SearchConfig, TuneConfig
from reglab.errors import ReglabError
from reglab.paths import run_key
from reglab.schema import ConfigError

log = logging.getLogger(__name__)


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


@dataclass
class SearchOutcome:
    name: str
    search: SearchConfig
    trials: list[Trial]
    best: Trial
    parent_run_id: str


# ----------------------------------------------------------------------- checks


def best_variant_name(name: str) -> str:
    return f"{name}{BEST_SUFFIX}"


def n_trials(search: SearchConfig, tune: TuneConfig) -> int:
    if tune.sampler == "grid":
        return math.prod(len(spec.choices or ()) for spec in search.params)
    return tune.n_trials if tune.n_trials is not None else search.n_trials


def ray_address(configured: str | None) -> tuple[str | None, str]:
    """The Ray head to use (None: a local instance) and the setting that named it."""
    if configured:
        return configured, "tune.address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return None, "tune.address"


def check_address(address: str, setting: str, timeout_s: float = 3.0) -> None:
    """A Ray head answers at host:port, or one line saying which setting is wrong."""
    host, _, port = address.rpartition(":")
    if address.startswith("ray://") or not host or not port.isdigit():
        raise ConfigError(
            f"{setting}={address!r}: expected host:port of a Ray head (e.g. 127.0.0.1:6379)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise ConfigError(
            f"{setting}={address!r}: no Ray head answers there ({error.strerror or error}); "
            "start one with `ray start --head` or fix the address"
        ) from None


def check_inputs(config: Config, name: str) -> SearchConfig:
    """Everything a search needs, checked before Ray or TensorFlow is touched."""
    search = config.search(name)
    search.check_params(name)
    if config.tune.sampler == "grid":
        for index, spec in enumerate(search.params):
            if spec.choices is None:
                raise ConfigError(
                    f"tune.sampler='grid' with search_spaces.{name}.params[{index}] "
                    f"({spec.key}) a range: a grid needs choices for every parameter"
                )
    address, setting = ray_address(config.tune.address)
    if address:
        check_address(address, setting)
    manifest = Path(config.paths.processed, "manifest.json")
    if not manifest.exists():
        raise ReglabError(
            f"{manifest} not found; run the data stages first (`dvc repro preprocess`)"
        )
    return search


def fingerprint(config: Config, name: str) -> str:
    """What a search's trials depend on; stored state made for another one starts over."""
    shared = dataclasses.asdict(config)
    for other in ("variants", "searches", "search_spaces", "paths"):
        shared.pop(other)
    shared["tracking"] = {"experiment": config.tracking.experiment}
    shared["tune"].pop("address")
    shared["search"] = dataclasses.asdict(config.search_spaces[name])
    text = json.dumps(shared, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -------------------------------------------------------------------- the trial


def trial_config(config: Config, search: SearchConfig, variant: str, values: dict) -> Config:
    """The config of one trial: one variant (base recipe + values), the search's epochs."""
    return dataclasses.replace(
        config,
        variants={variant: search.recipe(values)},
        seeds=config.seeds[:1],
        train=dataclasses.replace(config.train, epochs=search.epochs),
        tracking=dataclasses.replace(config.tracking, log_model=False),
    )


class Reporter:
    """The per-epoch hook: reports the epoch and the best objective so far to Ray Tune."""

    def __init__(self, objective: str, mode: str):
        self.objective = objective
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = math.inf

    def __call__(self, epoch: int, row: Mapping[str, float]) -> None:
        from ray import tune

        value = self.sign * float(row[self.objective])
        if math.isfinite(value):
            self.best = min(self.best, value)
        tune.report(
            {
                "epoch": epoch,
                "objective": self.sign * self.best,
                "val_data_loss": float(row["val_data_loss"]),
                "val_accuracy": float(row["val_accuracy"]),
            }
        )


def run_trial(params: dict[str, Any], *, config: Config, name: str, parent_run_id: str) -> None:
    """One trial in a Ray worker: train_variant with the reporting hook.

    The trial's files and MLflow run are named by its number in the search, not
    by Ray's trial id: a search resumed from experiment state saved before its
    last trials started makes them again, with new ids but the same numbers and
    (in serial mode) the same values, and they pick up what the killed ones left.
    """
    from ray import tune

    from reglab.tracking.search import SEARCH_TAG, TRIAL_TAG

    search = config.search_spaces[name]
    context = tune.get_context()
    trial_id = context.get_trial_id()
    variant = f"{name}-{_trial_dir(context.get_trial_dir())[1]}"
    key = run_key(variant, config.seeds[0])
    trial = trial_config(config, search, variant, params)
    reporter = Reporter(search.objective, search.mode)
    resumed = checkpoint_history(trial, key)
    finished = None if resumed else finished_attempt(trial, key)
    if finished is not None:
        # Trained and logged to the end before the kill: report its epochs again.
        rows, run_id = finished
        for row in rows:
            reporter(int(row["epoch"]), row)
        if run_id:
            import mlflow

            mlflow.MlflowClient().set_tag(run_id, TRIAL_TAG, trial_id)
        return
    # TensorFlow only for a trial that trains (its import is most of a trial's start-up).
    import keras

    from reglab.runner import train_variant

    keras.backend.clear_session()
    # A trial restarted after a kill resumes at its checkpoint's epoch: report the
    # epochs it trained before again, so ASHA decides as it would have.
    for row in resumed:
        reporter(int(row["epoch"]), row)
    train_variant(
        trial,
        key,
        hooks=[reporter],
        parent_run_id=parent_run_id,
        run_tags={SEARCH_TAG: name, TRIAL_TAG: trial_id},
    )


def checkpoint_history(trial: Config, key: str) -> list[dict[str, Any]]:
    """The epochs an interrupted attempt of this trial saved in its checkpoint."""
    from reglab.checkpoint import STATE_FILE

    state = Path(trial.paths.checkpoints, key, STATE_FILE)
    return json.loads(state.read_text()).get("history", []) if state.exists() else []


def finished_attempt(trial: Config, key: str) -> tuple[list[dict[str, str]], str | None] | None:
    """The epochs and MLflow run of an earlier attempt of this trial that trained this
    very config to the end: its run.json and history written, its checkpoint cleared
    (train_variant's last step, after the logging), if there is one."""
    import csv

    from reglab.config import config_hash
    from reglab.paths import history_file

    summary_file = Path(trial.paths.models, key, "run.json")
    history = history_file(trial.paths.history, key)
    if not (summary_file.exists() and history.exists()):
        return None
    summary = json.loads(summary_file.read_text())
    if summary.get("config_hash") != config_hash(trial):
        return None
    with history.open() as handle:
        return list(csv.DictReader(handle)), summary.get("mlflow_run_id")


# ----------------------------------------------------------------------- search


def search_params(name: str, search: SearchConfig, config: Config) -> dict[str, str]:
    """The parent run's params: the space, the sampler and its seed, the budget."""
    params = {
        "search": name,
        "sampler": "optuna.GridSampler" if config.tune.sampler == "grid" else "optuna.TPESampler",
        "sampler_seed": str(search.seed),
        "scheduler": "FIFO" if config.tune.sampler == "grid" else "ASHA",
        "asha.grace_period": str(config.tune.grace_period),
        "asha.reduction_factor": str(config.tune.reduction_factor),
        "objective": search.objective,
        "mode": search.mode,
        "n_trials": str(n_trials(search, config.tune)),
        "epochs_per_trial": str(search.epochs),
        "max_concurrent": str(config.tune.max_concurrent),
        "seed": str(config.seeds[0]),
    }
    for spec in search.params:
        if spec.choices is None:
            kind = "log-uniform" if spec.log else "uniform"
            params[f"space.{spec.key}"] = f"{kind} [{spec.low}, {spec.high}]"
        else:
            params[f"space.{spec.key}"] = f"choice {list(spec.choices)}"
    return params


def _absolute(config: Config, state_dir: Path) -> Config:
    """Ray workers run in other folders: every path absolute; the trials' models,
    histories and checkpoints in the search's state folder, not the pipeline's."""
    paths = {
        field.name: str(Path(getattr(config.paths, field.name)).resolve())
        for field in dataclasses.fields(config.paths)
    }
    trials = state_dir.resolve() / "trials"
    paths.update(
        processed=str(trial_data(Path(paths["processed"]), trials / "data")),
        models=str(trials / "models"),
        history=str(trials / "history"),
        checkpoints=str(trials / "checkpoints"),
    )
    return dataclasses.replace(config, paths=dataclasses.replace(config.paths, **paths))


TRIAL_SPLITS = ("train", "val")


def trial_data(processed: Path, folder: Path) -> Path:
    """A data folder for the trials that holds the training and validation arrays
    (links to the prepared ones) and the manifest, and no test array: a search
    cannot read the held-out test set, not even by mistake."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "manifest.json").symlink_to(processed / "manifest.json")
    for split in TRIAL_SPLITS:
        for part in ("x", "y"):
            (folder / f"{split}_{part}.npy").symlink_to(processed / f"{split}_{part}.npy")
    return folder


def run_search(config: Config, name: str) -> SearchOutcome:
    """Run (or resume) search ``name``; returns every trial and the best completed one."""
    import mlflow

    from reglab import tracking
    from reglab.tracking import search as records

    search = check_inputs(config, name)
    address, _ = ray_address(config.tune.address)
    state_dir = Path(config.paths.tune_state, name)
    stamp = fingerprint(config, name)
    stamp_file = state_dir / "fingerprint"
    if stamp_file.exists() and stamp_file.read_text() != stamp:
        log.info("%s: the search changed since its stored state; starting over", name)
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(stamp)
    config = _absolute(config, state_dir)

    uri = tracking.configure(config.tracking.uri, config.tracking.experiment)
    with (
        records.restored_tracking_uri(uri),
        records.served_store(uri, config.tune.tracking_server) as store,
    ):
        with _ray_connected(config, address, store.uri):  # while the server starts
            client = mlflow.MlflowClient(store.wait())
            experiment = client.get_experiment_by_name(config.tracking.experiment)
            parent = records.search_parent(
                client,
                experiment.experiment_id,
                state_dir,
                name,
                search_params(name, search, config),
                config.paths.processed,
            )
            results = _run_ray(config, name, search, state_dir, parent)
        runs = records.trial_runs(client, experiment.experiment_id, parent)
        trials = _collect(runs, search, results)
        best = best_trial(trials, search.mode)
        records.record_outcome(client, parent, search.objective, trials, best)
    counts = ", ".join(
        f"{sum(t.state == s for t in trials)} {s}" for s in ("completed", "pruned", "failed")
    )
    log.info(
        "%s: %d trials (%s); best %s=%.4f with %s",
        name, len(trials), counts, search.objective, best.objective, best.params,
    )  # fmt: skip
    return SearchOutcome(name, search, trials, best, parent)


def _runtime_env(config: Config, trial_uri: str) -> dict[str, Any]:
    threads = str(config.tune.threads_per_trial)
    return {
        "env_vars": {
            # Read when TensorFlow is first imported in the worker.
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": threads,
            "OMP_NUM_THREADS": threads,
            "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            "MLFLOW_TRACKING_URI": trial_uri,
            "MLFLOW_ENABLE_ASYNC_LOGGING": "true",
            "RAY_CHDIR_TO_TRIAL_DIR": "0",
            "PYTHONHASHSEED": "0",
        }
    }


def _sampler(search: SearchConfig, kind: str) -> Any:
    import optuna

    if kind == "grid":
        grid = {spec.key: list(spec.choices or ()) for spec in search.params}
        return optuna.samplers.GridSampler(grid, seed=search.seed)
    return optuna.samplers.TPESampler(seed=search.seed)


def _distributions(search: SearchConfig) -> dict[str, Any]:
    import optuna

    return {
        spec.key: optuna.distributions.CategoricalDistribution(list(spec.choices))
        if spec.choices is not None
        else optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log)
        for spec in search.params
    }


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
def _ray_connected(config: Config, address: str | None, trial_uri: str) -> Iterator[None]:
    """Connected to the Ray head at ``address`` (None: a local instance) until the end."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    init: dict[str, Any] = {
        "runtime_env": _runtime_env(config, trial_uri),
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


def _run_ray(
    config: Config, name: str, search: SearchConfig, state_dir: Path, parent: str
) -> list[Any]:
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from reglab.tune.scheduler import ResumableASHA

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, config=config, name=name, parent_run_id=parent),
        {"cpu": config.tune.cpus_per_trial, "gpu": config.tune.gpus_per_trial},
    )
    experiment = state_dir.resolve() / experiment_name(state_dir)
    if tune.Tuner.can_restore(str(experiment)):
        log.info("%s: resuming the stored search in %s", name, experiment)
        tuner = tune.Tuner.restore(
            str(experiment), trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        grid = config.tune.sampler == "grid"
        searcher = ConcurrencyLimiter(
            OptunaSearch(
                _distributions(search),
                metric="objective",
                mode=search.mode,
                sampler=_sampler(search, config.tune.sampler),
            ),
            max_concurrent=config.tune.max_concurrent,
        )
        scheduler = ResumableASHA(
            time_attr="epoch",
            # One more than the trial's epochs: ASHA stops a trial that reaches
            # max_t, and a trial that ran all its epochs should end by itself.
            max_t=search.epochs + 1,
            grace_period=min(config.tune.grace_period, search.epochs),
            reduction_factor=config.tune.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                metric="objective",
                mode=search.mode,
                search_alg=searcher,
                # A grid is a sweep: every point runs all its epochs.
                scheduler=FIFOScheduler() if grid else scheduler,
                num_samples=n_trials(search, config.tune),
                # A new actor per trial: a reused one must wait for the stopped
                # trial's thread to end its epoch, and past Ray's timeout Ray
                # fails the next trial ("Trainable runner reuse requires
                # reset_config()"), as it did under load in the benchmark.
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(
                name=experiment.name,
                storage_path=str(state_dir.resolve()),
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=0,
            ),
        )
    results = tuner.fit()
    return [results[index] for index in range(len(results))]


TRIAL_DIR = re.compile(r"^[A-Za-z_]+?_(?P<id>[0-9a-f]{5,}(?:_\d{5})?)_(?P<index>\d+)")


def _trial_dir(path: str) -> tuple[str, int]:
    """Ray's trial folder <trainable>_<trial id>_<index>_<params>: the id and creation index."""
    found = TRIAL_DIR.match(Path(path).name)
    return (found["id"], int(found["index"])) if found else (Path(path).name, 0)


def _collect(runs: Mapping[str, Any], search: SearchConfig, results: list[Any]) -> list[Trial]:
    """One Trial per Ray result, in the order Ray made them; the state from Ray and MLflow."""
    made = []
    for result in results:
        metrics = result.metrics or {}
        trial_id, index = _trial_dir(result.path)
        trial_id = metrics.get("trial_id") or trial_id
        run = runs.get(trial_id)
        epochs = int(metrics.get("epoch", 0) or 0)
        if result.error is not None:
            state = "failed"
        elif epochs >= search.epochs or (run is not None and run.info.status == "FINISHED"):
            state = "completed"  # all its epochs, or stopped early by its own recipe
        else:
            state = "pruned"
        objective = float(metrics.get("objective", math.nan))
        trial = Trial(
            number=0,
            trial_id=trial_id,
            params={spec.key: _plain(result.config[spec.key]) for spec in search.params},
            objective=objective if state != "failed" else math.nan,
            epochs=epochs,
            state=state,
            mlflow_run_id=run.info.run_id if run else None,
            error=_last_line(result.error),
        )
        made.append((index, trial))
    trials = [trial for _, trial in sorted(made, key=lambda pair: pair[0])]
    for number, trial in enumerate(trials):
        trial.number = number
    return trials


def _last_line(error: BaseException | None) -> str | None:
    """Ray wraps a trial's exception in its traceback; the last line is the cause."""
    if error is None:
        return None
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _plain(value: Any) -> Any:
    """NumPy scalars from Optuna become plain Python values (for YAML and MLflow)."""
    return value.item() if hasattr(value, "item") else value


def best_trial(trials: list[Trial], mode: str) -> Trial:
    completed = [t for t in trials if t.state == "completed" and math.isfinite(t.objective)]
    if not completed:
        states = {t.trial_id: t.error or t.state for t in trials}
        raise SearchFailed(f"no trial completed: {states}")
    sign = 1.0 if mode == "min" else -1.0
    return min(completed, key=lambda t: (sign * t.objective, t.number))
