"""What a hyperparameter search records: its parent run, its trials' states, the best.

A search is one MLflow run (``search:<name>``: the space, the sampler and its
seed, the budget, then the best trial's parameters and objective). Each trial
is a variant run nested under it (:func:`reglab.train.run.train_variant` with
``parent_run_id``), tagged with its Ray trial id, then with its state
(completed, pruned, failed) and whether it is the best. A pruned trial's run
ends FINISHED when the scheduler stops it (:func:`end_pruned_run`); FAILED is
for a trial that raised.

Trials run in parallel processes. With a sqlite store they log through a local
``mlflow server`` that :func:`served_store` starts for the search and stops
after it: one process writes the file, so no trial sees ``database is locked``.
The search's driver uses its own client of the store (:func:`search_client`),
and leaves the process's MLflow settings as they were.

Not imported by :mod:`reglab.tracking` itself: only a search needs it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from reglab.core.errors import ReglabError
from reglab.core.io import write_atomic
from reglab.core.net import free_port
from reglab.tracking.records import data_inputs
from reglab.tracking.store import check_store, ensure_experiment, sqlite_path

log = logging.getLogger(__name__)

SEARCH_TAG = "reglab.search"
KIND_TAG = "reglab.kind"
TRIAL_TAG = "reglab.trial_id"
STATE_TAG = "reglab.trial_state"
BEST_TAG = "reglab.best_trial"
PARETO_TAG = "reglab.pareto_front"  # a multi-objective search's: on its front or not
# On a finalist's repeat run (kind "repeat"): the number of the trial it repeats.
REPEAT_TAG = "reglab.repeat_of_trial"
PARENT_FILE = "mlflow_parent_run_id"
# The search's local tracking server, in its state folder: {"pid": ..., "port": ...}.
SERVER_FILE = "tracking_server.json"
# The address the search's trials log to, this time it runs (a served store's URL).
TRIAL_STORE_FILE = "trial_store"


class ServerFailed(ReglabError):
    """The local tracking server for a search did not start."""


class ServedStore:
    """The URI trials log to; :meth:`wait` returns it once its server answers."""

    def __init__(self, uri: str, server: subprocess.Popen | None = None, store: str = ""):
        self.uri = uri
        self.server = server
        self.store = store

    def wait(self) -> str:
        if self.server is not None:
            wait_healthy(self.uri, self.server)
            log.info("trials log through a tracking server at %s (store %s)", self.uri, self.store)
            self.server = None
        return self.uri


@contextlib.contextmanager
def served_store(uri: str, state_dir: Path, enabled: bool = True) -> Iterator[ServedStore]:
    """A sqlite store served by a local ``mlflow server`` while the search runs
    (its http URI); any other store as it is. The server is started, not waited
    for: the caller does other slow work (connecting to Ray) until it needs it,
    and leaves the file to it until then (the server creates a new store's
    tables). The server is stopped on the way out, whatever happened.

    It runs in its own process group (a Ctrl-C in the terminal reaches the search,
    which records what it has and then stops the server), and the whole group is
    stopped: ``mlflow server`` runs its workers as children. Its process group and
    port are kept in ``state_dir``: a search killed with SIGKILL cannot stop its
    server, so the next start of the search does, and serves the store on the
    same port again when it is free. The trials' config holds the URI, so the
    resumed trials find their checkpoints valid.
    """
    database = sqlite_path(uri)
    if not enabled or database is None:
        yield ServedStore(uri)
        return
    record = state_dir / SERVER_FILE
    port = stop_left_server(record, uri)
    if port is None or not _port_is_free(port):
        port = free_port()
    command = [
        # MLflow's job runner is not needed; its only setting is this variable.
        "env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        # Where a local store's artifacts go anyway (./mlruns beside mlflow.db).
        "--default-artifact-root", (database.parent / "mlruns").as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    write_atomic(record, json.dumps({"pid": server.pid, "port": port}))
    try:
        yield ServedStore(f"http://127.0.0.1:{port}", server, uri)
    finally:
        stop_group(server.pid, server)
        write_atomic(record, json.dumps({"pid": None, "port": port}))


def stop_left_server(record: Path, uri: str) -> int | None:
    """Stop the server of ``uri`` that ``record`` names, if it still runs (a search
    killed with SIGKILL left it); the port it served on (None: no record)."""
    try:
        left = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    pid = left.get("pid")
    if pid and _serves(pid, uri):
        log.info("stopping the tracking server (process group %d) left by a killed search", pid)
        stop_group(pid)
    return left.get("port")


def _serves(group: int, uri: str) -> bool:
    """Whether process group ``group`` is (still) the ``mlflow server`` of ``uri``."""
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        command = Path(f"/proc/{group}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        # The leader is gone, its workers are not: a group's id is not given to a
        # new process while the group has members.
        return Path("/proc/self").exists()
    except OSError:
        return False
    return uri.encode() in command


def stop_group(group: int, leader: subprocess.Popen | None = None, timeout_s: float = 20.0) -> None:
    """SIGTERM to process group ``group``, SIGKILL to what is left of it after
    ``timeout_s``; ``leader``, this process's child, is reaped."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    if leader is not None:
        leader.wait()


def _port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (as servers do, with
    SO_REUSEADDR: the connections a stopped server left do not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ServerFailed(f"the search's MLflow server exited with code {server.returncode}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        time.sleep(0.3)
    raise ServerFailed(f"the search's MLflow server at {url} did not answer in {timeout_s:.0f} s")


def search_client(
    uri: str, experiment: str, server_wait_s: float = 30.0
) -> tuple[mlflow.MlflowClient, str]:
    """A client of the store the trials log to (checked as a run's store is), and the
    id of the search's experiment, made if it is new."""
    check_store(uri, server_wait_s)
    client = mlflow.MlflowClient(uri)
    return client, ensure_experiment(client, experiment)


def tag_trial(run_id: str, trial_id: str) -> None:
    """Tag a trial's run with the Ray trial id that (again) reported it."""
    mlflow.MlflowClient().set_tag(run_id, TRIAL_TAG, trial_id)


def search_parent(
    client: mlflow.MlflowClient,
    experiment_id: str,
    state_dir: Path,
    name: str,
    params: Mapping[str, str],
    processed_dir: str,
) -> str:
    """The search's parent run; the same one when a killed search is started again.

    The data sets are logged here first: MLflow stores a data set once per
    experiment, and trials logging the same one at the same moment would race
    to insert it; made here, each trial links the existing one.
    """
    remembered = state_dir / PARENT_FILE
    if remembered.exists():
        run_id = remembered.read_text().strip()
        with contextlib.suppress(mlflow.exceptions.MlflowException):
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return run_id
    run = client.create_run(
        experiment_id, run_name=f"search:{name}", tags={SEARCH_TAG: name, KIND_TAG: "search"}
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id, params=[mlflow.entities.Param(key, value) for key, value in params.items()]
    )
    client.log_inputs(
        run_id,
        [
            mlflow.entities.DatasetInput(
                dataset._to_mlflow_entity(),
                tags=[mlflow.entities.InputTag("mlflow.data.context", context)],
            )
            for dataset, context in data_inputs(processed_dir)
        ],
    )
    remembered.write_text(run_id)
    return run_id


def trial_runs(client: mlflow.MlflowClient, experiment_id: str, parent: str) -> dict[str, Any]:
    """The search's trial runs by Ray trial id."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )
    return {run.data.tags[TRIAL_TAG]: run for run in runs if TRIAL_TAG in run.data.tags}


def end_pruned_run(state_dir: Path, experiment_id: str, parent: str, trial_id: str) -> str | None:
    """End the run of a trial the scheduler stopped, when it is stopped: FINISHED, tagged
    pruned, in the store the trials log to now (``TRIAL_STORE_FILE`` in ``state_dir``).
    A trial that ran to its end has already ended its run itself and is left as it is.
    The run's id, if it is ended here; if the store cannot be reached, a warning, and
    :func:`record_outcome` ends it at the end of the search."""
    try:
        client = mlflow.MlflowClient((state_dir / TRIAL_STORE_FILE).read_text().strip())
        runs = client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.mlflow.parentRunId = '{parent}' and tags.`{TRIAL_TAG}` = '{trial_id}' "
                "and attributes.status = 'RUNNING'"
            ),
        )
        for run in runs:
            client.set_tag(run.info.run_id, STATE_TAG, "pruned")
            client.set_terminated(run.info.run_id, "FINISHED")
            return run.info.run_id
    except (OSError, mlflow.exceptions.MlflowException) as error:
        log.warning("trial %s: its run could not be ended now (%s)", trial_id, error)
    return None


def log_search_outputs(uri: str, parent: str, directory: Path) -> None:
    """A search's written outputs (best.yaml, trials.csv, study.db, figures/) as artifacts
    of its run, where the MLflow UI shows them beside its metrics."""
    client = mlflow.MlflowClient(uri)
    for path in sorted(Path(directory).iterdir()):
        if path.is_dir():
            client.log_artifacts(parent, str(path), path.name)
        else:
            client.log_artifact(parent, str(path))


def latency_metrics(runs: list[Any]) -> dict[str, float]:
    """The median start latency of the trials and repeats that trained after a start."""
    import statistics

    latencies = [run.start_latency_s for run in runs if math.isfinite(run.start_latency_s)]
    return {"start_latency_median_s": statistics.median(latencies)} if latencies else {}


def record_outcome(client: mlflow.MlflowClient, parent: str, objective: str, outcome: Any) -> None:
    """Each trial's state and whether it is the best, as tags; the best (its mean and
    spread over its seeds), the single best trial and the counts on the parent."""
    trials, best = outcome.trials, outcome.best
    front = {trial.number for trial in outcome.front}
    for trial in trials:
        if trial.mlflow_run_id is None:
            continue
        client.set_tag(trial.mlflow_run_id, STATE_TAG, trial.state)
        client.set_tag(trial.mlflow_run_id, BEST_TAG, str(trial is best).lower())
        if outcome.front:
            client.set_tag(trial.mlflow_run_id, PARETO_TAG, str(trial.number in front).lower())
        status = client.get_run(trial.mlflow_run_id).info.status
        # A pruned trial is a normal outcome: FINISHED (its run was ended when it was
        # stopped, by end_pruned_run; here only if that did not happen, e.g. a kill).
        ended = "FAILED" if trial.state == "failed" else "FINISHED"
        if status != ended:
            client.set_terminated(trial.mlflow_run_id, ended)
    logged = client.get_run(parent).data.params
    for key, value in best.params.items():
        if f"best.{key}" not in logged:
            client.log_param(parent, f"best.{key}", value)
    states = [trial.state for trial in trials]
    trained = [*trials, *outcome.repeats]
    chosen = outcome.finalists[0] if outcome.finalists else None
    metrics = {
        f"best_{objective}": chosen.mean if chosen else best.objective,
        **({f"best_{objective}_std": chosen.std} if chosen and chosen.std is not None else {}),
        **{f"trials_{state}": states.count(state) for state in ("completed", "pruned", "failed")},
        "epochs_total": sum(trial.epochs for trial in trials),
        "repeats": len(outcome.repeats),
        "repeat_epochs_total": sum(repeat.epochs for repeat in outcome.repeats),
        # Where the search's time went: the seconds its epochs trained (trials and
        # repeats), and the median start latency of the trials that trained.
        "epoch_seconds_total": sum(t.epoch_seconds for t in trained),
        **latency_metrics(trained),
    }
    if outcome.front:  # several objectives: the best's value of each, and the front's size
        metrics.update({f"best_{name}": value for name, value in best.values.items()})
        metrics["pareto_front_size"] = len(outcome.front)
    for key, value in metrics.items():
        client.log_metric(parent, key, value)
    client.set_tag(parent, "best_trial_run_id", best.mlflow_run_id or "")
    single = outcome.single_best
    client.set_tag(parent, "single_best_trial", str(single.number if single else best.number))
    client.set_terminated(parent, "FINISHED")
