"""Run lifecycle: the pipeline's parent run, a variant's run (new or resumed), how it ends."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from reglab.tracking.store import TrackingLost, configure, server_errors

log = logging.getLogger(__name__)

PIPELINE_TAG = "reglab.pipeline"
# MLflow's tag naming a run's parent.
PARENT_TAG = "mlflow.parentRunId"


# Tags that belong to one run, not to the pipeline that groups it.
_OWN_TAGS = ("variant", "seed", "config_hash")


def pipeline_parent(experiment_name: str, key: str, tags: Mapping[str, str]) -> str:
    """The parent run named "pipeline" that groups one pipeline's runs in the UI.

    The key hashes what the runs share (data, model, training, code); a variant
    re-trained under the same key joins the same parent, so the group stays one
    pipeline, with the variant's older run kept beside it. A parent that ``tags``
    name already is the parent instead: under `mlflow run`, the entry layer tags
    every run with the launcher's run (``reglab.stages.run_tags``).
    """
    if tags.get(PARENT_TAG):
        return tags[PARENT_TAG]
    tags = {name: value for name, value in tags.items() if name not in _OWN_TAGS}
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name)
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        return found[0].info.run_id
    parent = client.create_run(
        experiment.experiment_id, run_name="pipeline", tags={**tags, PIPELINE_TAG: key}
    )
    client.set_terminated(parent.info.run_id, "FINISHED")
    # Variants started at the same moment may each have made a parent: all of
    # them keep the oldest, and each deletes its own if it is not that one.
    made = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'"
    )
    oldest = min(made, key=lambda run: (run.info.start_time, run.info.run_id))
    if oldest.info.run_id != parent.info.run_id:
        client.delete_run(parent.info.run_id)
    return oldest.info.run_id


def variant_run(
    name: str,
    tags: Mapping[str, str],
    parent_run_id: str,
    log_system_metrics: bool = False,
    run_id: str | None = None,
) -> contextlib.AbstractContextManager[mlflow.ActiveRun]:
    """A run for one variant, nested under ``parent_run_id`` and in that run's experiment:
    its pipeline's parent run, a search's, or the launcher's of `mlflow run`.

    ``run_id`` reopens an interrupted run of the same variant to resume it. A new run
    is made here, with the tags MLflow's run API gives a run (user, source, git
    commit), and started by its id: given an id, ``mlflow.start_run`` ignores
    MLFLOW_RUN_ID (set by `mlflow run` for the launcher's run), so the environment
    is left as it is.
    """
    from mlflow.tracking.context import registry

    client = mlflow.MlflowClient()
    tags = {**tags, PARENT_TAG: parent_run_id}
    if run_id is None:
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        made = client.create_run(experiment_id, run_name=name, tags=registry.resolve_tags(tags))
        run_id, tags = made.info.run_id, {}
    return ending_run(_start_run(client, run_id, tags=tags, log_system_metrics=log_system_metrics))


def _start_run(client: mlflow.MlflowClient, run_id: str, **options: Any) -> mlflow.ActiveRun:
    """``run_id`` as the active run. MLflow refuses to start a run of an experiment other
    than its active one (``mlflow.set_experiment``): the run's own is made active."""
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    return mlflow.start_run(run_id=run_id, **options)


@contextlib.contextmanager
def ending_run(active: mlflow.ActiveRun) -> Iterator[mlflow.ActiveRun]:
    """End the run FINISHED (on a clean ``sys.exit`` too), FAILED on an error, KILLED on
    Ctrl-C or SIGTERM."""
    import signal
    import threading

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Only the main thread may set a handler (a Ray Tune trial runs in another one).
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        span_parent(active.info.run_id)
        raise
    except TrackingLost:
        # The server cannot hear the status (the re-run resumes and finishes the run),
        # but the run must end: the process may start another one (a multirun). The
        # request fails after MLflow's retries, bounded by tracking.server_wait_s.
        with contextlib.suppress(*server_errors()):
            mlflow.end_run("FAILED")
        raise
    except BaseException as error:
        # A clean exit the caller asked for ends the run FINISHED: Ray Tune stops a
        # trial (ASHA pruning it) by raising SystemExit(0) in the trial's thread at
        # its next report; the search tags the run pruned.
        clean = isinstance(error, SystemExit) and error.code in (0, None)
        mlflow.end_run("FINISHED" if clean else "FAILED")
        span_parent(active.info.run_id)
        raise
    else:
        mlflow.end_run("FINISHED")
        span_parent(active.info.run_id)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def span_parent(run_id: str) -> None:
    """Move the end of ``run_id``'s pipeline parent to the end of ``run_id``, if later.

    The parent is created (its start) before its first child starts, and every
    child that ends moves its end, so the UI shows the pipeline's real duration.
    A launcher's run (``mlflow run``) is not the project's: it ends itself.
    """
    client = mlflow.MlflowClient()
    try:
        child = client.get_run(run_id)
        parent_id = child.data.tags.get(PARENT_TAG)
        parent = client.get_run(parent_id) if parent_id else None
    except mlflow.exceptions.MlflowException as error:
        log.warning("could not read run %s or its parent: %s", run_id, error)
        return
    if parent is None or PIPELINE_TAG not in parent.data.tags or child.info.end_time is None:
        return
    if parent.info.end_time is None or parent.info.end_time < child.info.end_time:
        client.set_terminated(parent_id, "FINISHED", end_time=child.info.end_time)


@contextlib.contextmanager
def resumed_run(uri: str, run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Log into an existing run (e.g. evaluate adding test metrics to the train run).

    The run keeps the status it had: a finished run stays FINISHED, and a failure
    while resumed marks it FAILED so the UI never shows a half-logged run as fine.
    """
    configure(uri)
    with _start_run(mlflow.MlflowClient(), run_id) as run:
        yield run
    span_parent(run_id)


def end_orphaned_run(run_id: str) -> None:
    """A run whose training was killed and will not resume: RUNNING becomes KILLED."""
    client = mlflow.MlflowClient()
    try:
        status = client.get_run(run_id).info.status
    except mlflow.exceptions.MlflowException:
        return  # in another store, or deleted: nothing to end
    if status == "RUNNING":
        client.set_terminated(run_id, "KILLED")
        log.info("MLflow run %s of an interrupted training marked KILLED", run_id)


def git_state(directory: str | Path = ".") -> dict[str, str]:
    """The commit the code ran from and whether the tree had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    return {"git_commit": commit, "git_dirty": str(dirty).lower()}
