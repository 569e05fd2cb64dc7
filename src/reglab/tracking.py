"""Every MLflow call of the project: tracking URI, runs, params, metrics, artifacts, models."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow

from reglab.errors import ReglabError
from reglab.metrics import EPOCH_METRICS

log = logging.getLogger(__name__)


def resolve_uri(configured: str) -> str:
    """MLFLOW_TRACKING_URI in the environment wins over the config.

    A relative sqlite path is made absolute: the run records where its store
    really is, and MLflow (which caches stores by URI) never mixes up two
    projects' ``sqlite:///mlflow.db`` in one process.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


class TrackingUnavailable(ReglabError):
    """The tracking server does not answer."""


def check_reachable(uri: str, timeout_s: float = 8.0) -> None:
    """Fail fast on an HTTP tracking server that does not answer.

    MLflow's own client retries for minutes; a user with a typo in the URI or a
    stopped server should hear about it within seconds, before any epoch.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    health = uri.rstrip("/") + "/health"
    try:
        response = requests.get(health, timeout=timeout_s)
        response.raise_for_status()
    except requests.RequestException as error:
        reason = type(error).__name__
        raise TrackingUnavailable(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it, "
            "or point MLFLOW_TRACKING_URI (or tracking.uri) at a running one"
        ) from None


def check_sqlite_store(uri: str) -> None:
    """A damaged sqlite store is one line naming the file, not SQLAlchemy's traceback."""
    prefix = "sqlite:///"
    path = Path(uri[len(prefix) :]) if uri.startswith(prefix) else None
    if path is None or not path.exists():
        return  # MLflow creates a new store
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as store:
            store.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except sqlite3.DatabaseError as error:
        raise TrackingUnavailable(
            f"{path}: the MLflow store is damaged ({error}); move it aside "
            f"(`mv {path} {path}.damaged`) and run again: a fresh store is created"
        ) from None


class TrackingLost(ReglabError):
    """The tracking server stopped answering while a run was being logged."""


def bound_server_wait(wait_s: float) -> None:
    """MLflow's HTTP retries, bounded to about ``wait_s`` seconds (its defaults: minutes).

    urllib3 sleeps backoff * 2**(n - 1) before the n-th retry; with backoff 2 the
    retries fit in 2 * (2**retries - 1) seconds. Settings the user made win.
    """
    retries = 1
    while 2 * (2 ** (retries + 1) - 1) <= wait_s:
        retries += 1
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, min(10, int(wait_s)))))


@contextlib.contextmanager
def lost_server_is(message: str) -> Iterator[None]:
    """Turn an error while the tracking server does not answer (after the bounded
    retries) into TrackingLost with ``message``; other errors pass unchanged."""
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (requests.RequestException, ConnectionError, MlflowException) as error:
        uri = mlflow.get_tracking_uri()
        try:
            check_reachable(uri, timeout_s=2.0)
        except TrackingUnavailable:
            raise TrackingLost(message) from None
        raise error


def configure(uri: str, experiment: str | None = None, server_wait_s: float = 30.0) -> str:
    """Point MLflow at the tracking store (and experiment); returns the URI in use."""
    uri = resolve_uri(uri)
    if uri.startswith(("http://", "https://")):
        bound_server_wait(server_wait_s)
    check_reachable(uri)
    check_sqlite_store(uri)
    mlflow.set_tracking_uri(uri)
    launcher = os.environ.get("MLFLOW_RUN_ID")
    if launcher:
        # Under `mlflow run`: nest in the launcher's experiment, where its run is.
        experiment_id = mlflow.MlflowClient().get_run(launcher).info.experiment_id
        mlflow.set_experiment(experiment_id=experiment_id)
    elif experiment:
        mark_model_training(mlflow.set_experiment(experiment))
    return uri


# MLflow 3's UI files an experiment without this tag under GenAI (traces, token usage).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def mark_model_training(experiment: Any) -> None:
    """Tag the experiment as model training, so MLflow's UI opens it on its runs.

    The tag decides the experiment's kind and its runs tab; the UI's GenAI/model
    training switch is also a per-browser setting that the URL parameter
    ``?workflowType=machine_learning`` sets (see the README). A kind a user chose
    in the UI is kept.
    """
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
        )


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"}; lists become their string form."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = str(value)
    return flat


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
    return parent.info.run_id


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

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
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


def log_run_setup(params: Mapping[str, Any], model_summary: str, processed_dir: str) -> None:
    """What a new run records before its first epoch: enough to re-create it from MLflow alone."""
    mlflow.log_params(flatten(params))
    mlflow.log_text(json.dumps(params, indent=2, default=str), "config.json")
    mlflow.log_text(model_summary, "model_summary.txt")
    mlflow.log_text(installed_packages(), "environment/requirements.txt")
    log_data_inputs(processed_dir)


def log_data_inputs(processed_dir: str) -> None:
    """Which data the run used, with the manifest's digest, shown in the UI's Datasets."""
    for dataset, context in data_inputs(processed_dir):
        mlflow.log_input(dataset, context=context)


# MLflow's conventional contexts for a run's input data sets.
DATA_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def data_inputs(directory: str | Path) -> list[tuple[Any, str]]:
    """One MLflow dataset per split with the manifest's digest, and its context.

    The arrays are memory-mapped: MLflow records only their schema and shapes.
    """
    import warnings

    import mlflow.data  # slow to import; only the stages that log need it
    import numpy as np

    from reglab.data.prepare import load_manifest

    directory = Path(directory).resolve()
    manifest = load_manifest(directory)
    inputs = []
    for split, context in DATA_CONTEXTS.items():
        features = np.load(directory / f"{split}_x.npy", mmap_mode="r", allow_pickle=False)
        targets = np.load(directory / f"{split}_y.npy", mmap_mode="r", allow_pickle=False)
        with warnings.catch_warnings():
            # MLflow registers its local source twice (for "" and "file") and warns
            # that a local path is ambiguous between the two identical classes.
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways")
            dataset = mlflow.data.from_numpy(
                features,
                targets=targets,
                source=directory.as_uri(),
                name=f"{manifest['dataset']}-{split}",
                digest=manifest["digests"][split],
            )
        inputs.append((dataset, context))
    return inputs


def log_epoch(
    row: Mapping[str, float],
    weight_statistics: Mapping[str, float],
    step: int,
    synchronous: bool = False,
) -> None:
    """One epoch's losses (history row -> MLflow names) and weight statistics.

    Asynchronous by default: training does not wait for a local store. To a
    server, synchronous: a failure is seen at once (and bounded), instead of
    piling up in the background queue that the process would wait for at exit.
    """
    metrics = {name: float(row[key]) for key, name in EPOCH_METRICS.items() if key in row}
    metrics.update(weight_statistics)
    mlflow.log_metrics(metrics, step=step, synchronous=synchronous)


def log_missing_epochs(run_id: str, history: list[Mapping[str, float]]) -> None:
    """Log the history rows whose epoch the run has no ``val/data_loss`` for."""
    marker = EPOCH_METRICS["val_data_loss"]
    logged = {metric.step for metric in mlflow.MlflowClient().get_metric_history(run_id, marker)}
    for row in history:
        epoch = int(row["epoch"])
        if epoch not in logged:
            metrics = {name: float(row[key]) for key, name in EPOCH_METRICS.items() if key in row}
            mlflow.log_metrics(metrics, step=epoch)


def log_trained_model(
    model: Any,
    histograms: Mapping[str, Any],
    history: list[Mapping[str, float]],
    label: str,
    *,
    example_inputs: Any | None,
    registered_model_name: str | None = None,
    class_names: Sequence[str] | None = None,
) -> None:
    """After training: the pending epochs, the kernel histograms, the model (with an
    input example, when given one; it predicts probabilities of ``class_names``) and
    the epoch count."""
    mlflow.flush_async_logging()
    # Epochs whose asynchronous logging failed while the server was away.
    log_missing_epochs(mlflow.active_run().info.run_id, history)
    log_weight_histograms({int(epoch): counts for epoch, counts in histograms.items()}, label)
    if example_inputs is not None:
        log_keras_model(model, example_inputs, registered_model_name, class_names)
    mlflow.log_metrics({"epochs_trained": len(history)})


def log_weight_histograms(
    by_epoch: Mapping[int, Mapping[str, Mapping[str, list[float]]]], label: str
) -> None:
    """Images with a step (the UI scrubs through training), raw counts, a start/end overlay."""
    import matplotlib.pyplot as plt

    from reglab import weights

    for epoch, hists in sorted(by_epoch.items()):
        figure = weights.plot_histograms(hists, f"{label}: kernel weights, epoch {epoch}")
        mlflow.log_image(weights.render(figure), key="weights/kernel_histograms", step=epoch)
    mlflow.log_text(
        json.dumps({str(epoch): hists for epoch, hists in sorted(by_epoch.items())}),
        "weights/histograms.json",
    )
    first, last = min(by_epoch), max(by_epoch)
    names = list(by_epoch[first])
    # The first layer and the last hidden one: where the tutorials look.
    layers = [names[0], names[-2]] if len(names) > 2 else names
    title = f"{label}: kernel weights at epoch {first} and {last}"
    overlay = weights.plot_start_end_overlay(by_epoch[first], by_epoch[last], layers, title)
    mlflow.log_figure(overlay, "weights/histograms_start_end.png")
    final = weights.plot_histograms(by_epoch[last], f"{label}: kernel weights after training")
    mlflow.log_figure(final, "weights/histograms_final.png")
    plt.close("all")


SERVED_MODEL = Path(__file__).with_name("served_model.py")


def log_keras_model(
    model: Any,
    example_inputs: Any,
    registered_model_name: str | None = None,
    class_names: Sequence[str] | None = None,
) -> str:
    """Log the model MLflow serves: class probabilities with the class names.

    The Keras model (logits, as training and evaluation use it) goes in as the
    ``keras_model`` artifact of :mod:`reglab.served_model`, a pyfunc model from
    code whose ``predict`` returns a DataFrame of softmax probabilities, one
    column per class name; the signature names them too. Pip requirements are
    given explicitly: inferring them costs seconds per model.
    """
    import tempfile

    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf
    from mlflow.models import infer_signature

    from reglab.metrics import softmax

    logits = model.predict(example_inputs, verbose=0)
    names = [str(name) for name in class_names or range(logits.shape[1])]
    probabilities = pd.DataFrame(softmax(logits), columns=names)
    with tempfile.TemporaryDirectory(prefix="reglab-model-") as folder:
        keras_file = Path(folder, "model.keras")
        model.save(keras_file)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVED_MODEL),
            artifacts={"keras_model": str(keras_file)},
            model_config={"class_names": names},
            signature=infer_signature(np.asarray(example_inputs), probabilities),
            input_example=np.asarray(example_inputs),
            pip_requirements=[
                f"tensorflow=={tf.__version__}",
                f"keras=={keras.__version__}",
                f"mlflow=={mlflow.__version__}",
                f"pandas=={pd.__version__}",
            ],
            registered_model_name=registered_model_name,
        )
    return info.model_uri


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


def installed_packages() -> str:
    """`pip freeze` of the running environment: what a re-run must install.

    The project itself is left out: it comes from the git commit, not an index.
    """
    from importlib import metadata

    lines = {
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "reglab"
    }
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


# ---------------------------------------------------------------------------
# The evaluate and compare stages' logging.


def log_evaluation(
    uri: str,
    run_id: str,
    *,
    metrics: Mapping[str, float],
    report_text: str,
    confusion: Mapping[str, Any],
    figure: Any,
) -> None:
    """Add a variant's test metrics, its eval report and its confusion matrix (as JSON and
    as a figure) to the variant's training run, under ``evaluation/``."""
    with resumed_run(uri, run_id):
        mlflow.log_metrics(dict(metrics))
        mlflow.log_dict(dict(confusion), "evaluation/confusion_matrix.json")
        mlflow.log_text(report_text, "evaluation/report.json")
        mlflow.log_figure(figure, "evaluation/confusion_matrix.png")


def parent_of(run_ids: list[str]) -> str | None:
    """The parent run all of ``run_ids`` are nested under, if they share one."""
    client = mlflow.MlflowClient()
    parents = set()
    for run_id in run_ids:
        try:
            parents.add(client.get_run(run_id).data.tags.get("mlflow.parentRunId"))
        except mlflow.exceptions.MlflowException:
            log.warning("MLflow run %s not found in this store: no common parent run", run_id)
            return None
    return parents.pop() if len(parents) == 1 else None


def log_comparison(
    uri: str,
    experiment: str,
    *,
    run_ids: list[str],
    tags: Mapping[str, str],
    metrics: Mapping[str, float],
    summary: str,
    leaderboard: list[dict[str, Any]],
    figures: list[Path],
) -> str:
    """A run named "compare" in ``experiment``: metrics, summary.md, leaderboard.json and the
    figures. Nested under the parent of ``run_ids`` when they share one. Returns its run id."""
    configure(uri, experiment)
    tags = dict(tags)
    parent = parent_of(run_ids) if run_ids else None
    if parent:
        tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name="compare", tags=tags) as run:
        mlflow.log_metrics(dict(metrics))
        mlflow.log_text(summary, "summary.md")
        mlflow.log_dict(leaderboard, "leaderboard.json")
        for path in figures:
            mlflow.log_artifact(str(path), "figures")
    span_parent(run.info.run_id)
    return run.info.run_id
