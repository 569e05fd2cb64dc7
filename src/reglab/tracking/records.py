"""What a training run records: setup, data sets, epochs, histograms, the model."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow

from reglab.evaluate.metrics import EPOCH_METRICS
from reglab.report.weight_figures import HistogramImages
from reglab.tracking import secrets
from reglab.tracking.store import flatten

log = logging.getLogger(__name__)


def log_run_setup(
    params: Mapping[str, Any],
    model_summary: str,
    processed_dir: str,
    model_code: Sequence[Path] = (),
) -> None:
    """What a new run records before its first epoch: enough to re-create it from MLflow
    alone, the user's model code (under ``code/``) included."""
    mlflow.log_params(flatten(params))
    mlflow.log_text(secrets.redact(json.dumps(params, indent=2, default=str)), "config.json")
    mlflow.log_text(model_summary, "model_summary.txt")
    for path in model_code:  # relative to the project folder
        mlflow.log_artifact(str(path), Path("code", path.parent).as_posix())
    mlflow.log_text(secrets.redact(installed_packages()), "environment/requirements.txt")
    log_data_inputs(processed_dir)


def log_data_inputs(processed_dir: str) -> None:
    """Which data the run used, with the manifest's digest, shown in the UI's Datasets:
    every split in one request."""
    inputs = data_inputs(processed_dir)
    if inputs:
        mlflow.log_inputs(
            datasets=[dataset for dataset, _ in inputs],
            contexts=[context for _, context in inputs],
            tags_list=[None] * len(inputs),
        )


# MLflow's conventional contexts for a run's input data sets.
DATA_CONTEXTS = {"train": "training", "val": "validation", "test": "testing"}


def data_inputs(directory: str | Path) -> list[tuple[Any, str]]:
    """One MLflow dataset per split with the manifest's digest, and its context.

    The arrays are memory-mapped: MLflow records only their schema and shapes.
    A split whose arrays the folder does not hold (a search's trials have no
    test arrays) is not listed.
    """
    import warnings

    import mlflow.data  # slow to import; only the stages that log need it
    import numpy as np

    from reglab.data.prepare import load_manifest

    directory = Path(directory).resolve()
    manifest = load_manifest(directory)
    inputs = []
    for split, context in DATA_CONTEXTS.items():
        if not (directory / f"{split}_x.npy").exists():
            continue
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
) -> None:
    """One epoch's losses (history row -> MLflow names) and weight statistics, in one
    synchronous batch.

    Synchronous, to a local store and to a server alike: a failure is seen at once
    (and bounded), and the batch costs about 10 ms an epoch on a local sqlite store.
    MLflow's asynchronous queue would cost more than it saves: its thread waits for
    new data with a one-second timeout before it looks for a flush or the run's end
    (mlflow.utils.async_logging.AsyncLoggingQueue._log_run_data), so the flush after
    training and the run's end each waited up to a second, most of a short trial's
    time outside its epochs (bench/README.md, "Where a trial's last seconds went").
    """
    metrics = {name: float(row[key]) for key, name in EPOCH_METRICS.items() if key in row}
    metrics.update(weight_statistics)
    mlflow.log_metrics(metrics, step=step, synchronous=True)


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
    histograms: HistogramImages,
    history: list[Mapping[str, float]],
    *,
    draw_histograms: bool = True,
    example_inputs: Any | None,
    registered_model_name: str | None = None,
    class_names: Sequence[str] | None = None,
    keras_file: Path | None = None,
    user_code: Sequence[Path] = (),
    user_modules: Sequence[str] = (),
) -> None:
    """After training: the pending epochs, the kernel histograms (their counts, and
    the images with ``draw_histograms``), the model (with an input example, when given one;
    it predicts probabilities of ``class_names``; from ``keras_file`` when the model
    is saved there already; with the user's code it needs) and the epoch count."""
    mlflow.flush_async_logging()
    # Epochs whose logging failed while the server was away.
    log_missing_epochs(mlflow.active_run().info.run_id, history)
    log_weight_histograms(histograms, draw=draw_histograms)
    if example_inputs is not None:
        log_keras_model(
            model,
            example_inputs,
            registered_model_name,
            class_names,
            keras_file,
            user_code=user_code,
            user_modules=user_modules,
        )
    mlflow.log_metrics({"epochs_trained": len(history)})


def log_weight_histograms(histograms: HistogramImages, draw: bool = True) -> None:
    """Raw counts per recorded epoch; with ``draw``, images with a step (the UI scrubs
    through training) and a start/end overlay, as the
    :class:`~reglab.report.weight_figures.HistogramImages` of the run draws them."""
    counts = {str(epoch): histograms.histograms[str(epoch)] for epoch in histograms.recorded()}
    mlflow.log_text(json.dumps(counts), "weights/histograms.json")
    if not draw:
        return
    images, overlay = histograms.finish()
    for epoch, image in images.items():
        mlflow.log_image(image, key="weights/kernel_histograms", step=epoch)
    # The last image is the final histogram: written as it is, not drawn again.
    mlflow.log_image(images[max(images)], artifact_file="weights/histograms_final.png")
    mlflow.log_figure(overlay, "weights/histograms_start_end.png")


def log_keras_model(
    model: Any,
    example_inputs: Any,
    registered_model_name: str | None = None,
    class_names: Sequence[str] | None = None,
    keras_file: Path | None = None,
    *,
    user_code: Sequence[Path] = (),
    user_modules: Sequence[str] = (),
) -> str:
    """Log the model MLflow serves: class probabilities with the class names.

    ``user_code`` (the user's packages the model's custom objects come from) is
    shipped with it as MLflow's ``code_paths``, and ``user_modules`` are imported
    when it loads, so that the model loads in safe mode anywhere.

    The Keras model (logits, as training and evaluation use it) goes in as the
    ``keras_model`` artifact of :mod:`reglab.tracking.served_model`, a pyfunc model from
    code whose ``predict`` returns a DataFrame of softmax probabilities, one
    column per class name; the signature names them too. Pip requirements are
    given explicitly: inferring them costs seconds per model. ``keras_file``, the
    model saved already, spares saving it again. ``example_inputs`` give the
    signature's shapes but are not logged as the model's input example: MLflow
    would then load the logged model back and predict on them, about 1.5 s per
    run (the tests load logged models and check their predictions instead).
    """
    import tempfile
    import warnings

    import keras
    import numpy as np
    import pandas as pd
    import tensorflow as tf
    from mlflow.models import infer_signature

    from reglab.evaluate.metrics import softmax
    from reglab.tracking import served_model

    # A direct call: the signature needs the outputs' names and types, not predict's
    # batching (which would trace another function).
    logits = np.asarray(model(np.asarray(example_inputs), training=False))
    names = [str(name) for name in class_names or range(logits.shape[1])]
    probabilities = pd.DataFrame(softmax(logits), columns=names)
    with tempfile.TemporaryDirectory(prefix="reglab-model-") as folder:
        if keras_file is None:
            keras_file = Path(folder, "model.keras")
            model.save(keras_file)
        with warnings.catch_warnings():
            # MLflow's advice to give an input example, printed at every log_model.
            warnings.filterwarnings("ignore", message=".*An input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(served_model.__file__)),
                artifacts={"keras_model": str(keras_file)},
                model_config={"class_names": names, "modules": list(user_modules)},
                code_paths=[str(path) for path in user_code] or None,
                signature=infer_signature(np.asarray(example_inputs), probabilities),
                pip_requirements=[
                    f"tensorflow=={tf.__version__}",
                    f"keras=={keras.__version__}",
                    f"mlflow=={mlflow.__version__}",
                    f"pandas=={pd.__version__}",
                ],
                registered_model_name=registered_model_name,
            )
    return info.model_uri


@functools.cache
def installed_packages() -> str:
    """The running environment's distributions as ``name==version`` lines (what a re-run
    must install), from :mod:`importlib.metadata`. The project itself is left out:
    it comes from the git commit, not an index. Read once per process: a search's
    worker logs it for trial after trial."""
    from importlib import metadata

    found: dict[str, str] = {}
    for distribution in metadata.distributions():
        name = distribution.name
        if name and name.lower() != "reglab":
            found.setdefault(name.lower(), f"{name}=={distribution.version}")
    return "".join(line + "\n" for _, line in sorted(found.items()))
