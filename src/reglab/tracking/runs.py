"""Run lifecycle: the pipeline's parent run, a variant's run (new or resumed), how it ends."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from reglab.tracking.store import TrackingLost, configure

log = logging.getLogger(__name__)

PIPELINE_TAG = "reglab.pipeline"


# Tags that belong to one run, not to the pipeline that groups it.
_OWN_TAGS = ("variant", "seed", "config_hash")


def pipeline_parent(experiment_name: str, key: str, tags: Mapping[str, str]) -> str:
    """The parent run named "pipeline" that groups one pipeline's runs in the UI.

    The key hashes what the runs share (data, model, training, code); a variant
    re-trained under the same key joins the same parent, so the group stays one
    pipeline, with the variant's older run kept beside it. Under `mlflow run`,
    the launcher's run (MLFLOW_RUN_ID) is the parent instead.
    """
    if os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_RUN_ID"]
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
    parent_run_id: str | None = None,
    log_system_metrics: bool = False,
    run_id: str | None = None,
) -> contextlib.AbstractContextManager[mlflow.ActiveRun]:
    """A run for one variant, nested under its pipeline's parent run.

    Under `mlflow run`, MLFLOW_RUN_ID names the launcher's run; that run is the
    parent instead (otherwise every variant would log into that one run).
    ``run_id`` reopens an interrupted run of the same variant to resume it.
    """
    tags = dict(tags)
    parent_run_id = os.environ.pop("MLFLOW_RUN_ID", None) or parent_run_id
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if run_id:
        active = mlflow.start_run(run_id=run_id, log_system_metrics=log_system_metrics)
        mlflow.set_tags(tags)
    else:
        active = mlflow.start_run(run_name=name, tags=tags, log_system_metrics=log_system_metrics)
    return ending_run(active)


@contextlib.contextmanager
def ending_run(active: mlflow.ActiveRun) -> Iterator[mlflow.ActiveRun]:
    """End the run FINISHED, FAILED on an error, KILLED on Ctrl-C or SIGTERM."""
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
        _forget_active_run()  # the server cannot hear it; the re-run finishes the run
        raise
    except BaseException:
        mlflow.end_run("FAILED")
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
        parent_id = child.data.tags.get("mlflow.parentRunId")
        parent = client.get_run(parent_id) if parent_id else None
    except mlflow.exceptions.MlflowException as error:
        log.warning("could not read run %s or its parent: %s", run_id, error)
        return
    if parent is None or PIPELINE_TAG not in parent.data.tags or child.info.end_time is None:
        return
    if parent.info.end_time is None or parent.info.end_time < child.info.end_time:
        client.set_terminated(parent_id, "FINISHED", end_time=child.info.end_time)


def _forget_active_run() -> None:
    """Leave the active run without a request to a server that is gone.

    ``mlflow.end_run`` would first wait the whole bounded retry again to set a
    status nobody receives; MLflow has no public call that only leaves the run,
    so this pops its active-run stack the way ``end_run`` does before its request.
    """
    from mlflow.tracking import fluent

    stack = fluent._active_run_stack.get()
    if stack:
        stack.pop()
    os.environ.pop("MLFLOW_RUN_ID", None)


@contextlib.contextmanager
def resumed_run(uri: str, run_id: str) -> Iterator[mlflow.ActiveRun]:
    """Log into an existing run (e.g. evaluate adding test metrics to the train run).

    The run keeps the status it had: a finished run stays FINISHED, and a failure
    while resumed marks it FAILED so the UI never shows a half-logged run as fine.
    """
    configure(uri)
    with mlflow.start_run(run_id=run_id) as run:
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
