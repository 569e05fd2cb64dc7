"""Run a search: Optuna's TPE suggests, Ray Tune runs the trials, ASHA stops the bad ones.

Each trial is :func:`reglab.train.run.train_variant` on the search's base recipe
with the suggested values, nested under the search's MLflow parent run, with
one epoch hook that reports to Ray Tune: the same model builder, training loop,
loss decomposition and logging as a pipeline variant, on train and validation only.

Ray Tune keeps the experiment's state under ``paths.tune_state/<search>``: a
search started again after a kill restores it; finished trials are not re-run
and an interrupted trial resumes from its last epoch (train_variant's checkpoint).
Ray saves that state every 10 s or so and not the scheduler's: what happened
since is made good here. A trial is known by its number (Ray makes a lost one
again under a new id, with the same values in serial mode), a trial already
trained to the end reports its epochs again instead of training (trial.py), and
ASHA's rungs get back the results of the trials restored as finished (scheduler.py).
The Ray Tune run itself is in engine.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import socket
from collections.abc import Mapping
from pathlib import Path

from reglab.config.checks import ConfigError
from reglab.config.schema import Config, SearchConfig, TuneConfig
from reglab.core.digest import digest
from reglab.core.errors import ReglabError
from reglab.core.io import write_atomic
from reglab.report.optuna_study import pareto_front
from reglab.tune.engine import collect, ray_connected, run_ray, run_repeats
from reglab.tune.finalists import pick_finalists, rank, repeat_seeds
from reglab.tune.outcome import SearchOutcome, best_trial, n_trials
from reglab.tune.trial import trial_data, trial_epochs

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------- checks


def serves_store(search: SearchConfig, tune: TuneConfig) -> bool:
    """Whether trials log through a local tracking server (a sqlite store only): when
    several run at once. One trial at a time is one writer, which sqlite serializes
    by itself, so a serial search spares the server's start-up."""
    return tune.tracking_server and min(tune.max_concurrent, n_trials(search, tune)) > 1


def ray_address(configured: str | None, environment: str | None = None) -> tuple[str | None, str]:
    """The Ray head to use (None: a local instance) and the setting that named it:
    ``tune.address``, else ``environment`` (RAY_ADDRESS, read by the entry layer)."""
    if configured:
        return configured, "tune.address"
    if environment:
        return environment, "RAY_ADDRESS"
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


def check_inputs(config: Config, name: str, ray_address_env: str | None = None) -> SearchConfig:
    """Everything a search needs, checked before Ray or TensorFlow is touched
    (``ray_address_env``: RAY_ADDRESS, the head to use if ``tune.address`` is not set)."""
    search = config.search(name)
    search.check_params(name)
    if config.tune.sampler == "grid":
        for index, spec in enumerate(search.params):
            if spec.choices is None:
                raise ConfigError(
                    f"tune.sampler='grid' with search_spaces.{name}.params[{index}] "
                    f"({spec.key}) a range: a grid needs choices for every parameter"
                )
    address, setting = ray_address(config.tune.address, ray_address_env)
    if address:
        check_address(address, setting)
    manifest = Path(config.paths.processed, "manifest.json")
    if not manifest.exists():
        raise ReglabError(
            f"{manifest} not found; run the data stages first (`dvc repro preprocess`)"
        )
    return search


def fingerprint(config: Config, name: str, store: str) -> dict[str, str]:
    """What a search's trials depend on, by part: its space (and objective), the data and
    training settings, the trial settings (sampler, budget, scheduler) and the tracking
    store its trial runs are in. Stored state made for another search starts over."""
    shared = dataclasses.asdict(config)
    for other in ("variants", "searches", "search_spaces", "paths", "tracking", "tune"):
        shared.pop(other)
    tune = dataclasses.asdict(config.tune)
    tune.pop("address")
    return {
        "space": digest(dataclasses.asdict(config.search_spaces[name]), 16),
        "data and training": digest(shared, 16),
        "trial settings": digest(tune, 16),
        "experiment": digest(config.tracking.experiment, 16),
        "tracking store": digest(store, 16),
    }


def changed_parts(stored: str, stamp: Mapping[str, str]) -> list[str]:
    """The parts of ``stamp`` that differ from a stored fingerprint (all, if unreadable)."""
    try:
        before = json.loads(stored)
    except ValueError:
        return list(stamp)
    if not isinstance(before, dict):
        return list(stamp)
    return [part for part, value in stamp.items() if before.get(part) != value]


# ----------------------------------------------------------------------- search


def search_params(name: str, search: SearchConfig, config: Config) -> dict[str, str]:
    """The parent run's params: the space, the sampler and its seed, the budget."""
    params = {
        "search": name,
        "sampler": "optuna.GridSampler" if config.tune.sampler == "grid" else "optuna.TPESampler",
        "sampler_seed": str(search.seed),
        "scheduler": "FIFO" if config.tune.sampler == "grid" or search.multi else "ASHA",
        "asha.grace_period": str(config.tune.grace_period),
        "asha.reduction_factor": str(config.tune.reduction_factor),
        "objective": ",".join(search.objectives),
        "mode": ",".join(search.modes),
        "n_trials": str(n_trials(search, config.tune)),
        "epochs_per_trial": str(trial_epochs(config, search)),
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
        runs=str(trials / "runs"),
    )
    return dataclasses.replace(config, paths=dataclasses.replace(config.paths, **paths))


def run_search(
    config: Config,
    name: str,
    *,
    ray_address_env: str | None = None,
    worker_env: Mapping[str, str] | None = None,
) -> SearchOutcome:
    """Run (or resume) search ``name``; returns every trial and the best completed one.

    ``ray_address_env`` is RAY_ADDRESS (the head to use if ``tune.address`` is not
    set); ``worker_env``, settings of this process the trials' workers get too.
    """
    from reglab import tracking
    from reglab.config.tracking import server_wait_settings
    from reglab.tracking import search as records
    from reglab.tracking import secrets
    from reglab.tune.callbacks import trial_starts  # with Ray

    search = check_inputs(config, name, ray_address_env)
    address, _ = ray_address(config.tune.address, ray_address_env)
    state_dir = Path(config.paths.tune_state, name)
    uri = tracking.resolve_uri(config.tracking.uri)
    stamp = fingerprint(config, name, uri)
    stamp_file = state_dir / "fingerprint"
    resumed = stamp_file.exists()
    if resumed and (changed := changed_parts(stamp_file.read_text(), stamp)):
        log.info(
            "%s: a stored search with another %s is in %s; starting a fresh search",
            name, " and ".join(changed), state_dir,
        )  # fmt: skip
        shutil.rmtree(state_dir)
        resumed = False
    epochs = trial_epochs(config, search)
    if epochs != config.train.epochs:
        log.warning(
            "%s: trials train %d epochs and %s_best %d (train.epochs): %s",
            name, epochs, name, config.train.epochs,
            "short trials cannot see late overfitting" if epochs < config.train.epochs
            else "the search scores a longer training than the one it recommends",
        )  # fmt: skip
    if search.multi:
        log.info(
            "%s: objectives %s: every trial trains its %d epochs (ASHA ranks trials on one "
            "number) and no finalist is repeated; the answer is the Pareto front",
            name, search.objectives, epochs,
        )  # fmt: skip
    state_dir.mkdir(parents=True, exist_ok=True)
    stamp_file.write_text(json.dumps(stamp, indent=2) + "\n")
    config = _absolute(config, state_dir)

    tracking.check_sqlite_store(uri)
    with records.served_store(uri, state_dir, serves_store(search, config.tune)) as store:
        handed = dict(worker_env or {})
        if store.uri.startswith(("http://", "https://")):
            # The workers' MLflow retries, bounded as a run's are (a setting handed on wins).
            handed = {**server_wait_settings(config.tracking.server_wait_s), **handed}
        with ray_connected(config, address, store.uri, handed):  # while the server starts
            trial_uri = store.wait()
            client, experiment_id = records.search_client(
                trial_uri, config.tracking.experiment, config.tracking.server_wait_s
            )
            # The trials log where the config says: to the search's server, if it has one.
            config = dataclasses.replace(
                config, tracking=dataclasses.replace(config.tracking, uri=trial_uri)
            )
            parent = records.search_parent(
                client,
                experiment_id,
                state_dir,
                name,
                search_params(name, search, config),
                config.paths.processed,
            )
            if resumed:
                done = records.trial_runs(client, experiment_id, parent)
                log.info(
                    "%s: %d trials of the stored search so far, their runs in %s under run %s",
                    name, len(done), secrets.redact(uri), parent,
                )  # fmt: skip
            write_atomic(state_dir / records.TRIAL_STORE_FILE, trial_uri)
            results = run_ray(config, name, search, state_dir, parent, experiment_id)
            runs = records.trial_runs(client, experiment_id, parent)
            starts = trial_starts(state_dir)
            trials = collect(runs, search, trial_epochs(config, search), results, starts)
            single = best_trial(trials, search.mode)
            # Several objectives: the Pareto front, no repeats (they rank on one number).
            front = pareto_front(search, trials) if search.multi else []
            chosen = [] if search.multi else pick_finalists(
                trials, search.mode, config.tune.finalists, config.tune.repeats
            )  # fmt: skip
            seeds = repeat_seeds(config)
            repeats = run_repeats(config, name, chosen, seeds, state_dir) if seeds else []
        # Of a front, the best by the first objective is the one finalist, on its own seed.
        finalists = rank(front[:1] or chosen, repeats, config.seeds[0], search.mode)
        outcome = SearchOutcome(
            name, search, trials, finalists[0].trial, parent, finalists, repeats, single, front
        )
        records.record_outcome(client, parent, search.primary, outcome)
    counts = ", ".join(
        f"{sum(t.state == s for t in trials)} {s}" for s in ("completed", "pruned", "failed")
    )
    if search.multi:
        log.info(
            "%s: %d trials (%s); a Pareto front of %d over %s; best by %s: %s with %s",
            name, len(trials), counts, len(front), search.objectives, search.primary,
            {k: round(v, 4) for k, v in outcome.best.values.items()}, outcome.best.params,
        )  # fmt: skip
        return outcome
    best = outcome.finalists[0]
    spread = f" ± {best.std:.4f} over seeds {list(best.values)}" if best.std is not None else ""
    log.info(
        "%s: %d trials (%s); best %s=%.4f%s with %s",
        name, len(trials), counts, search.objective, best.mean, spread, best.trial.params,
    )  # fmt: skip
    if outcome.best is not single:
        log.info(
            "%s: over its seeds, trial %d is the likely best; the single best trial was %d",
            name, outcome.best.number, single.number,
        )  # fmt: skip
    return outcome
