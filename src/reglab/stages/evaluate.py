"""DVC stage `evaluate@<variant>-<seed>`: test metrics of one trained run.

The argument is a run key, ``<variant>@<seed>``; it names the model folder, the
report, the confusion-plot CSV and the first-layer weights file alike.
"""

from pathlib import Path

from reglab import evaluation
from reglab.compose import load_params
from reglab.config import Config
from reglab.data.prepare import load_splits
from reglab.errors import ReglabError
from reglab.paths import eval_file, metrics_file, model_dir, parse_run_key
from reglab.stages import run_stage
from reglab.tracking import resolve_uri


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.evaluate <variant>@<seed>")
    evaluate_run(load_params(), argv[0])


def evaluate_run(config: Config, key: str) -> None:
    """Evaluate the trained run ``key`` on the held-out test set; write and log its report."""
    variant, seed = parse_run_key(key)
    config.variant(variant)  # an unknown variant or seed fails before any work
    config.check_seed(seed)
    paths = config.paths
    result = evaluation.evaluate_variant(
        model_dir(paths.models, key),
        load_splits(paths.processed, config.data, splits=("train", "test")),
        class_names=config.data.class_names,
        batch_size=config.evaluation.batch_size,
        calibration_bins=config.evaluation.calibration_bins,
        sparsity_threshold=config.evaluation.sparsity_threshold,
    )
    evaluation.write_outputs(
        result,
        eval_file(paths.eval, key),
        Path(paths.plots, "confusion", f"{key}.csv"),
        Path(paths.weights, f"{key}.json"),
        metrics_file(paths.metrics, key),
    )
    evaluation.log_report(result.report, resolve_uri(config.tracking.uri))


if __name__ == "__main__":
    run_stage(main)
