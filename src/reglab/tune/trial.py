"""One trial of a search, in a Ray worker: train_variant with a hook reporting to Ray Tune.

A trial is known by its number in the search (its Ray trial folder's index), not
by Ray's trial id: a search resumed from experiment state saved before its last
trials started makes them again under new ids, and they pick up the checkpoint
and MLflow run the killed attempt left. A trial already trained to the end
reports its saved epochs again instead of training (and does not import TensorFlow).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from reglab.config.paths import run_key
from reglab.config.recipes import EarlyStoppingConfig
from reglab.config.schema import SEARCH_OBJECTIVES, Config, SearchConfig
from reglab.evaluate.metrics import EPOCH_TIMING


def trial_epochs(config: Config, search: SearchConfig) -> int:
    """A trial's epochs: the search's ``epochs`` if the user set it, else ``train.epochs``,
    the epochs its ``_best`` variant is trained for."""
    return search.epochs if search.epochs is not None else config.train.epochs


def trial_config(
    config: Config, search: SearchConfig, variant: str, values: dict, seed: int | None = None
) -> Config:
    """The config of one trial: one variant (base recipe + values), the trial's epochs,
    one seed (the pipeline's first, or ``seed`` for a finalist's repeat), no served
    model and no histogram images."""
    return dataclasses.replace(
        config,
        variants={variant: search.recipe(values)},
        seeds=[seed] if seed is not None else config.seeds[:1],
        train=dataclasses.replace(config.train, epochs=trial_epochs(config, search)),
        # A trial's run has what ranks and explains it (params, per-epoch metrics,
        # histogram counts); the served model and the histogram images are its
        # `_best` variant's: drawing and uploading them is over a second per trial.
        tracking=dataclasses.replace(config.tracking, log_model=False, histogram_images=False),
    )


def objective_key(name: str) -> str:
    """The key of objective ``name`` in a trial's reports (and in Ray's results)."""
    return f"objective_{name}"


class Reporter:
    """The per-epoch hook: reports to Ray Tune the objective at the weights the trial
    would keep if it ended with this epoch, as the final model keeps them.

    That is the epoch's own value, or, under early stopping that restores its best
    weights, the value at the best epoch so far (:meth:`EarlyStoppingConfig.kept_index`).
    ASHA compares it at each rung and Optuna is told its last value: a trial that
    dips early and then overfits is ranked by where it ended, as its final model
    would be. A value that is not a number (a diverged epoch) is reported as the worst.

    The report of ``last_epoch`` (the trial's last) waits for :meth:`flush`, called
    once the trial's run is logged to its end: ASHA may stop a trial at its last rung
    as at any other, and Ray's stop ends the trial in its report, which would leave a
    trial that trained every epoch without its final logging (weights, run.json).

    The first of ``objectives`` (a search's :attr:`SearchConfig.objectives`) is reported
    as ``objective``; each (the further ones of a multi-objective search too) as
    ``objective_<name>``, at the same weights.
    """

    def __init__(
        self,
        objectives: Sequence[str],
        rule: EarlyStoppingConfig,
        last_epoch: int | None = None,
    ):
        self.objective = objectives[0]
        # The worst value of each, in its own direction, for an epoch that diverged.
        self.signs = {n: 1.0 if SEARCH_OBJECTIVES[n] == "min" else -1.0 for n in objectives}
        self.rule = rule
        self.last_epoch = last_epoch
        self.rows: list[Mapping[str, Any]] = []
        self.held: dict[str, Any] | None = None

    def __call__(self, epoch: int, row: Mapping[str, Any]) -> None:
        from ray import tune

        self.rows.append(row)
        kept = self.rows[self.rule.kept_index(self.rows)]
        values = {}
        for name, sign in self.signs.items():
            value = float(kept[name])
            values[objective_key(name)] = value if math.isfinite(value) else sign * math.inf
        report = {
            "epoch": epoch,
            "objective": values[objective_key(self.objective)],
            **values,
            "kept_epoch": int(kept["epoch"]),
            "val_data_loss": float(row["val_data_loss"]),
            "val_accuracy": float(row["val_accuracy"]),
        }
        # The epoch's own seconds and when it began, for an epoch trained now (an
        # epoch reported again from a checkpoint or a finished attempt has neither):
        # what the search's training share and trials' start latency are made of.
        report.update({key: float(row[key]) for key in EPOCH_TIMING if key in row})
        if self.last_epoch is not None and epoch >= self.last_epoch:
            self.held = report
        else:
            tune.report(report)

    def flush(self) -> None:
        """The held report of the last epoch, if there is one."""
        from ray import tune

        if self.held is not None:
            tune.report(self.held)
            self.held = None


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
    variant = f"{name}-{trial_dir(context.get_trial_dir())[1]}"
    trial = trial_config(config, search, variant, params)
    tags = {SEARCH_TAG: name, TRIAL_TAG: trial_id}
    train_reporting(trial, variant, search, parent_run_id, tags, retag=trial_id)


def run_repeat(
    params: dict[str, Any], *, config: Config, name: str, trial_runs: Mapping[str, str]
) -> None:
    """A finalist trained again under another seed, in a Ray worker: its trial's recipe
    and epochs, scored the same way, nested under its trial's MLflow run. Its files are
    named by the trial's number and the seed, so a repeat restarted after a kill
    resumes from its checkpoint, or reports its finished epochs again."""
    from reglab.tracking.search import KIND_TAG, REPEAT_TAG, SEARCH_TAG

    repeat = params["repeat"]
    search = config.search_spaces[name]
    variant = f"{name}-{repeat['trial']}"
    trial = trial_config(config, search, variant, repeat["params"], seed=repeat["seed"])
    tags = {SEARCH_TAG: name, KIND_TAG: "repeat", REPEAT_TAG: str(repeat["trial"])}
    train_reporting(trial, variant, search, trial_runs[str(repeat["trial"])], tags)


def train_reporting(
    trial: Config,
    variant: str,
    search: SearchConfig,
    parent_run_id: str,
    tags: Mapping[str, str],
    retag: str | None = None,
) -> None:
    """train_variant of the one variant and seed of ``trial`` with the reporting hook,
    or, for an attempt already trained to the end, its epochs reported again (its run
    tagged with ``retag``, the Ray trial id that reported it this time)."""
    from reglab.tracking.search import tag_trial

    key = run_key(variant, trial.seeds[0])
    reporter = Reporter(
        search.objectives, trial.variants[variant].early_stopping, last_epoch=trial.train.epochs
    )
    resumed = checkpoint_history(trial, key)
    finished = None if resumed else finished_attempt(trial, key)
    if finished is not None:
        # Trained and logged to the end before the kill: report its epochs again.
        rows, run_id = finished
        for row in rows:
            reporter(int(row["epoch"]), row)
        if run_id and retag:
            tag_trial(run_id, retag)
        reporter.flush()
        return
    # TensorFlow only for a trial that trains (its import is most of a new worker's
    # start-up). train_variant builds the model in a cleared Keras session.
    from reglab.train.run import train_variant

    # A trial restarted after a kill resumes at its checkpoint's epoch: report the
    # epochs it trained before again, so ASHA decides as it would have.
    for row in resumed:
        reporter(int(row["epoch"]), row)
    train_variant(trial, key, hooks=[reporter], parent_run_id=parent_run_id, run_tags=tags)
    reporter.flush()


def checkpoint_history(trial: Config, key: str) -> list[dict[str, Any]]:
    """The epochs an interrupted attempt of this trial saved in its checkpoint."""
    from reglab.train.checkpoint import STATE_FILE

    state = Path(trial.paths.checkpoints, key, STATE_FILE)
    return json.loads(state.read_text()).get("history", []) if state.exists() else []


def finished_attempt(trial: Config, key: str) -> tuple[list[dict[str, str]], str | None] | None:
    """The epochs and MLflow run of an earlier attempt of this trial that trained this
    very config to the end: its run.json and history written, its checkpoint cleared
    (train_variant's last step, after the logging), if there is one."""
    import csv

    from reglab.config.paths import history_file, run_record_file
    from reglab.config.schema import config_hash

    summary_file = Path(trial.paths.models, key, "run.json")
    history = history_file(trial.paths.history, key)
    if not (summary_file.exists() and history.exists()):
        return None
    record_file = run_record_file(trial.paths.runs, key)
    summary = json.loads(summary_file.read_text())
    if summary.get("config_hash") != config_hash(trial) or not record_file.exists():
        return None
    with history.open() as handle:
        rows = list(csv.DictReader(handle))
    return rows, json.loads(record_file.read_text()).get("mlflow_run_id")


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


TRIAL_DIR = re.compile(r"^[A-Za-z_]+?_(?P<id>[0-9a-f]{5,}(?:_\d{5})?)_(?P<index>\d+)")


def trial_dir(path: str) -> tuple[str, int]:
    """Ray's trial folder <trainable>_<trial id>_<index>_<params>: the id and creation index."""
    found = TRIAL_DIR.match(Path(path).name)
    return (found["id"], int(found["index"])) if found else (Path(path).name, 0)
