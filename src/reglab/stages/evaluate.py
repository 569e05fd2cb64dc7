"""Test metrics of one trained run, named by its run key ``<variant>@<seed>``.

The pipeline's train stage evaluates right after training
(:func:`train_and_evaluate`), in its own process (one TensorFlow start-up per
run instead of two); the training itself never sees the test set.
``python -m reglab.stages.evaluate <key>`` evaluates a trained model alone,
e.g. to look at a model again without retraining it. The key names the model
folder, the report, the confusion-plot CSV and the weights file alike.
"""

from pathlib import Path

from reglab.evaluate import evaluation
from reglab.config.compose import load_params
from reglab.config.schema import Config
from reglab.data.prepare import load_splits
from reglab.core.errors import ReglabError
from reglab.config.paths import eval_file, metrics_file, model_dir, parse_run_key
from reglab.stages import run_stage
from reglab.tracking import resolve_uri


def evaluate_run(config: Config, key: str) -> None:
    """Evaluate ``models/<key>`` on the test set, write its reports, log them to its run."""
    report_evaluation(config, key, evaluation_of(config, key))


def train_and_evaluate(config: Config, key: str) -> None:
    """Train ``key`` (:func:`reglab.train.run.train_variant`), then :func:`evaluate_run` it.

    The test-set evaluation starts on a worker thread as soon as the model folder is
    written, while the run logs its served model and kernel histograms to MLflow:
    the two overlap (TensorFlow's predict releases the GIL). Its reports are written
    and logged after the training run's logging has finished. A failed training run
    raises its own error; the evaluation started beside it is then dropped.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from reglab.train.run import train_variant

    started: list[Future[evaluation.Evaluation]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate") as pool:
        train_variant(
            config,
            key,
            outputs_written=lambda: started.append(pool.submit(evaluation_of, config, key)),
        )
        result = started[0].result() if started else evaluation_of(config, key)
    report_evaluation(config, key, result)


def evaluation_of(config: Config, key: str) -> evaluation.Evaluation:
    """The test (and train) metrics of ``models/<key>``, loaded from its folder."""
    config.run_recipe(*parse_run_key(key))  # an unknown variant or seed fails before any work
    paths = config.paths
    return evaluation.evaluate_variant(
        model_dir(paths.models, key),
        load_splits(paths.processed, config.data, splits=("train", "test")),
        class_names=config.data.class_names,
        batch_size=config.evaluation.batch_size,
        calibration_bins=config.evaluation.calibration_bins,
        sparsity_threshold=config.evaluation.sparsity_threshold,
    )


def report_evaluation(config: Config, key: str, result: evaluation.Evaluation) -> None:
    """Write the evaluation's reports and log them to the variant's run."""
    paths = config.paths
    evaluation.write_outputs(
        result,
        eval_file(paths.eval, key),
        Path(paths.plots, "confusion", f"{key}.csv"),
        Path(paths.weights, f"{key}.json"),
        metrics_file(paths.metrics, key),
    )
    evaluation.log_report(result.report, resolve_uri(config.tracking.uri))


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.evaluate <variant>@<seed>")
    evaluate_run(load_params(), argv[0])


if __name__ == "__main__":
    run_stage(main)
