"""The benchmark's workloads; each runs in its own Python process.

``python -m bench.workloads <kind> <spec.json> <result.json>``. A fresh process
per workload gives every run a cold TensorFlow (so the first epoch's tracing is
really the first) and a peak resident memory of its own.

Kinds:

- ``prepare``: compose ``conf/`` with the benchmark's overrides into a
  ``params.yaml`` and run the project's download and preprocess stages on it.
- ``bare``: the tutorials' script: a Keras model of the same architecture,
  ``model.fit`` on in-memory arrays with validation data, nothing else.
- ``project``: ``reglab.train.run.train_variant`` with everything on (MLflow,
  loss decomposition, weight statistics, histograms, model logging).
- ``pipeline``: the dense matmul FLOP/s this machine reaches with TensorFlow,
  then training throughput by input pipeline and batch size (one process for
  both, as neither reports memory and every TensorFlow start-up costs seconds).

Both training workloads are timed by the same :class:`EpochTimer`, attached
by wrapping ``keras.Model.fit`` so the project's code runs unchanged.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench.workloads")


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_epoch_timer() -> Any:
    """A callback that splits each epoch into steps, validation and the rest.

    It goes last in the callback list and its companion ``timer.first`` first,
    so ``callbacks_s`` is the time the other callbacks' ``on_epoch_end`` took
    (for the project: the loss decomposition with its validation pass, the
    weight statistics, the checkpoint). It overrides no batch hook, so Keras keeps
    dispatching batch callbacks asynchronously and the timer costs nothing per
    step. An epoch lasts from its ``on_epoch_begin`` to the next epoch's: every
    callback's ``on_epoch_end`` counts, and so would work between two
    ``model.fit`` calls of a caller that fits in several calls (the project
    fits once). The last epoch ends at ``on_train_end``.
    """
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.reset()

        def reset(self) -> None:
            self.epochs: list[dict[str, float]] = []
            self._current: dict[str, float] | None = None
            self._ended_at: float | None = None

        def _close(self, now: float) -> None:
            marks = self._current
            if marks is None:
                return
            steps_end = marks.get("steps_end", now)
            validation_end = marks.get("validation_end", steps_end)
            callbacks_end = marks.get("callbacks_end", validation_end)
            self.epochs.append(
                {
                    "steps_s": steps_end - marks["begin"],
                    "validation_s": validation_end - steps_end,
                    "epoch_end_s": now - validation_end,
                    # Part of epoch_end_s: the callbacks before this one in the list.
                    "callbacks_s": callbacks_end - validation_end,
                    "total_s": now - marks["begin"],
                }
            )
            self._current = None

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            now = time.perf_counter()
            if self._ended_at is not None and self.epochs:
                # Another fit call follows: the previous epoch lasted until now.
                extra = now - self._ended_at
                self.epochs[-1]["epoch_end_s"] += extra
                self.epochs[-1]["total_s"] += extra
            self._ended_at = None
            self._close(now)
            self._current = {"begin": now}

        def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
            if self._current is not None and "steps_end" not in self._current:
                self._current["steps_end"] = time.perf_counter()

        def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
            if self._current is not None:
                self._current["validation_end"] = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            if self._current is not None:
                self._current["callbacks_end"] = time.perf_counter()

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            self._ended_at = time.perf_counter()
            self._close(self._ended_at)

    class StepsEnd(keras.callbacks.Callback):
        """Goes first in the list: its ``on_epoch_end`` comes right after the steps
        and any Keras validation pass, before every other callback's epoch end.
        Without it, a fit with no ``validation_data`` would count its epoch-end
        work as steps."""

        def __init__(self, timer: EpochTimer) -> None:
            super().__init__()
            self.timer = timer

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            marks = self.timer._current
            if marks is not None:
                now = time.perf_counter()
                marks.setdefault("steps_end", now)
                marks.setdefault("validation_end", now)

    timer = EpochTimer()
    timer.first = StepsEnd(timer)
    return timer


def instrument_fit(record: dict[str, Any]) -> Any:
    """Wrap ``keras.Model.fit`` to time epochs and count the fitted model's FLOPs.

    Returns the timer; its ``epochs`` hold every epoch since its last ``reset()``.
    """
    import keras

    from bench.flops import forward_flops_per_sample

    original_fit = keras.Model.fit
    timer = make_epoch_timer()

    @functools.wraps(original_fit)  # __wrapped__ undoes the instrumentation
    def timed_fit(self: keras.Model, *args: Any, callbacks: Any = None, **kwargs: Any) -> Any:
        if "forward_flops_per_sample" not in record:
            record["forward_flops_per_sample"] = forward_flops_per_sample(self)
            record["params"] = int(self.count_params())
        record["fit_calls"] = record.get("fit_calls", 0) + 1
        return original_fit(
            self, *args, callbacks=[timer.first, *(callbacks or []), timer], **kwargs
        )

    keras.Model.fit = timed_fit
    return timer


def summarize_epochs(epochs: list[dict[str, float]], train_samples: int) -> dict[str, Any]:
    """Throughput of the epochs after the first (the first traces the graphs)."""
    if len(epochs) < 2:
        raise ValueError(f"{len(epochs)} epoch(s) timed; at least 2 are needed (one is warm-up)")
    steady = epochs[1:]

    def median(key: str) -> float:
        return statistics.median(epoch[key] for epoch in steady)

    return {
        "epochs": epochs,
        "first_epoch_s": epochs[0]["total_s"],
        "first_epoch_samples_per_s": train_samples / epochs[0]["total_s"],
        "epoch_s": median("total_s"),
        "steps_s": median("steps_s"),
        "validation_s": median("validation_s"),
        "epoch_end_s": median("epoch_end_s"),
        "callbacks_s": median("callbacks_s"),
        # Whole epochs: steps, validation and every epoch-end callback.
        "epoch_samples_per_s": statistics.median(
            train_samples / epoch["total_s"] for epoch in steady
        ),
        # Training steps alone: what the hardware comparison uses.
        "step_samples_per_s": statistics.median(
            train_samples / epoch["steps_s"] for epoch in steady
        ),
    }


def load_arrays(processed: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The preprocess stage's arrays, read the way a tutorial would: np.load."""
    directory = Path(processed)
    return np.load(directory / f"{split}_x.npy"), np.load(directory / f"{split}_y.npy")


def build_tutorial_model(spec: dict[str, Any]) -> Any:
    """The default CNN written as the tutorials write it: a Sequential of Keras layers."""
    import keras

    model_spec = spec["model"]
    layers: list[Any] = [keras.Input(shape=tuple(spec["image_shape"]))]
    for filters in model_spec["conv_filters"]:
        layers += [
            keras.layers.Conv2D(
                filters, model_spec["kernel_size"], activation=model_spec["activation"]
            ),
            keras.layers.MaxPooling2D(2),
        ]
    layers.append(keras.layers.Flatten())
    layers += [
        keras.layers.Dense(units, activation=model_spec["activation"])
        for units in model_spec["dense_units"]
    ]
    layers.append(keras.layers.Dense(spec["num_classes"]))
    model = keras.Sequential(layers)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=spec["learning_rate"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def run_prepare(spec: dict[str, Any]) -> dict[str, Any]:
    """params.yaml for the benchmark, and the project's own data stages run on it."""
    from reglab.config.compose import compose, to_yaml
    from reglab.config.schema import validate
    from reglab.core.io import write_atomic
    from reglab.stages import download, preprocess

    workspace = Path(spec["workspace"])
    composed = compose(spec["overrides"])
    config = validate(composed)
    write_atomic(workspace / "params.yaml", to_yaml(composed))
    os.chdir(workspace)
    download.main([])
    preprocess.main([])
    manifest = json.loads(Path(config.paths.processed, "manifest.json").read_text())
    return {
        "params": str(workspace / "params.yaml"),
        "processed": str(Path(config.paths.processed).resolve()),
        "sizes": manifest["sizes"],
        "image_shape": list(config.data.image_shape),
        "num_classes": config.data.num_classes,
        "seed": config.seeds[0],
        "epochs": config.train.epochs,
        "batch_size": config.train.batch_size,
        "learning_rate": config.optimizer.learning_rate,
        "optimizer": config.optimizer.name,
        "deterministic": config.train.deterministic,
        "model": {
            "name": config.model.name,
            "conv_filters": list(config.model.conv_filters),
            "kernel_size": config.model.kernel_size,
            "dense_units": list(config.model.dense_units),
            "activation": config.model.activation,
        },
        "tracking": {
            "log_model": config.tracking.log_model,
            "histogram_every": config.tracking.histogram_every,
            "system_metrics": config.tracking.system_metrics,
        },
        "train_probe_size": config.train.train_probe_size,
    }


def run_hardware(spec: dict[str, Any]) -> dict[str, Any]:
    """Dense float32 matmul FLOP/s: the best of several timed products (the machine's limit)."""
    import tensorflow as tf

    size = spec["matmul_size"]
    generator = tf.random.Generator.from_seed(0)
    left = generator.normal((size, size), dtype=tf.float32)
    right = generator.normal((size, size), dtype=tf.float32)
    flops = 2 * size**3
    rates = []
    for repeat in range(spec["matmul_repeats"] + 2):
        start = time.perf_counter()
        product = tf.matmul(left, right)
        # Reading one element waits for the product, on any device.
        float(product[0, 0].numpy())
        elapsed = time.perf_counter() - start
        if repeat >= 2:  # the first products pay for thread-pool start-up
            rates.append(flops / elapsed)
    gpus = tf.config.list_physical_devices("GPU")
    return {
        "matmul_size": size,
        "matmul_flops_per_s": max(rates),
        "matmul_flops_per_s_median": statistics.median(rates),
        "device": f"GPU ({len(gpus)} visible)" if gpus else "CPU (no GPU visible)",
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
    }


def run_bare(spec: dict[str, Any]) -> dict[str, Any]:
    import keras

    record: dict[str, Any] = {}
    timer = instrument_fit(record)
    x_train, y_train = load_arrays(spec["processed"], "train")
    x_val, y_val = load_arrays(spec["processed"], "val")
    keras.utils.set_random_seed(spec["seed"])
    model = build_tutorial_model(spec)
    model.fit(
        x_train,
        y_train,
        batch_size=spec["batch_size"],
        epochs=spec["epochs"],
        validation_data=(x_val, y_val),
        verbose=0,
    )
    return {**record, **summarize_epochs(timer.epochs, len(x_train))}


def run_project(spec: dict[str, Any]) -> dict[str, Any]:
    """One variant through the project's training path, logged to a fresh sqlite store."""
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chdir(run_dir)  # the sqlite store's artifacts land in ./mlruns
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{run_dir / 'mlflow.db'}"
    from reglab.config.compose import load_params
    from reglab.config.paths import run_key
    from reglab.train.run import train_variant

    record: dict[str, Any] = {}
    timer = instrument_fit(record)
    config = load_params(spec["params"], check_fresh=False)
    profiler = None
    if spec.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    summary = train_variant(config, run_key(spec["variant"], config.seeds[0]))
    record["train_variant_s"] = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(run_dir / "project.prof")
        record["profile"] = profile_entries(profiler)
    # MLflow set-up, artifacts, histogram figures, the model logged: before and after training.
    record["outside_epochs_s"] = record["train_variant_s"] - sum(
        epoch["total_s"] for epoch in timer.epochs
    )
    record["epochs_trained"] = summary["epochs_trained"]
    train_samples = spec["sizes"]["train"]
    return {**record, **summarize_epochs(timer.epochs, train_samples)}


# Functions outside reglab worth seeing in the profile: where an epoch's time can go.
PROFILED_NAMES = {
    "fit",
    "predict",
    "evaluate",
    "save_weights",
    "log_metrics",
    "log_image",
    "log_figure",
    "log_model",
    "log_input",
    "start_run",
    "flush_async_logging",
    "enable_op_determinism",
}


def profile_entries(profiler: Any, limit: int = 40) -> list[dict[str, Any]]:
    """The profile's reglab functions and a few named library ones, by cumulative time."""
    import pstats

    stats = pstats.Stats(profiler)
    entries = []
    for (filename, line, name), (_, calls, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        if "/reglab/" in filename or name in PROFILED_NAMES:
            short = filename.split("site-packages/")[-1].split("/src/")[-1]
            entries.append(
                {"function": f"{short}:{line}:{name}", "calls": calls, "cumulative_s": cumulative}
            )
    entries.sort(key=lambda entry: entry["cumulative_s"], reverse=True)
    return entries[:limit]


def input_dataset(
    pipeline: str, x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epochs: int
) -> tuple[Any, Any, dict[str, Any]]:
    """(x, y, fit keyword arguments) for one input pipeline."""
    import tensorflow as tf

    if pipeline == "arrays":
        return x, y, {"batch_size": batch_size, "shuffle": True}
    if pipeline == "tf_data":
        dataset = (
            tf.data.Dataset.from_tensor_slices((x, y))
            .cache()
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        return dataset, None, {}
    if pipeline == "epoch_batches":
        # The project's own: per-epoch orders (a function of seed and epoch) and
        # a gather from in-memory tensors, prefetched.
        from reglab.train.fit import epoch_batches

        steps = -(-len(x) // batch_size)
        dataset = epoch_batches(x, y, seed, range(epochs), batch_size, shuffle=True)
        return dataset, None, {"steps_per_epoch": steps, "shuffle": False}
    if pipeline == "synthetic":
        # One batch, already in memory, repeated: no input work at all, so this
        # is the model's own speed, the ceiling any input pipeline can reach.
        steps = -(-len(x) // batch_size)
        batch = (tf.constant(x[:batch_size]), tf.constant(y[:batch_size]))
        return tf.data.Dataset.from_tensors(batch).repeat(steps), None, {}
    raise ValueError(f"pipeline={pipeline!r}: unknown")


def run_pipeline(spec: dict[str, Any]) -> dict[str, Any]:
    """Matmul FLOP/s, then training-step throughput for each batch size and pipeline.

    Pipelines are interleaved within one batch size, so drift in the machine's
    load hits them alike.
    """
    import keras

    hardware = run_hardware(spec)
    record: dict[str, Any] = {}
    timer = instrument_fit(record)
    x_train, y_train = load_arrays(spec["processed"], "train")
    rows = []
    for batch_size in spec["batch_sizes"]:
        for pipeline in spec["pipelines"]:
            keras.utils.set_random_seed(spec["seed"])
            model = build_tutorial_model(spec)
            timer.reset()
            x, y, kwargs = input_dataset(
                pipeline, x_train, y_train, batch_size, spec["seed"], spec["pipeline_epochs"]
            )
            model.fit(x, y, epochs=spec["pipeline_epochs"], verbose=0, **kwargs)
            epochs = summarize_epochs(timer.epochs, len(x_train))
            rows.append(
                {
                    "batch_size": batch_size,
                    "pipeline": pipeline,
                    "samples_per_s": epochs["step_samples_per_s"],
                    "first_epoch_s": epochs["first_epoch_s"],
                }
            )
            log.info(
                "batch %d, %s: %.0f samples/s", batch_size, pipeline, rows[-1]["samples_per_s"]
            )
    return {"rows": rows, "hardware": hardware}


WORKLOADS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "prepare": run_prepare,
    "bare": run_bare,
    "project": run_project,
    "pipeline": run_pipeline,
}


def main(argv: list[str]) -> int:
    kind, spec_path, result_path = argv
    logging.basicConfig(
        level=os.environ.get("REGLAB_LOG_LEVEL", "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    spec = json.loads(Path(spec_path).read_text())
    start = time.perf_counter()
    result = WORKLOADS[kind](spec)
    result["workload_s"] = time.perf_counter() - start
    result["peak_rss_mib"] = peak_rss_mib()
    Path(result_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
