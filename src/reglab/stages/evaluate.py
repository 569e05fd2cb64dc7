"""DVC stage `evaluate@<variant>`: test metrics of one trained variant.

The argument is a run key: ``<variant>`` or, for one seed of a multi-seed run,
``<variant>@<seed>``; it names the model folder and the report file alike.
"""

from pathlib import Path

from reglab import evaluation
from reglab.config import load_params
from reglab.data.prepare import load_splits
from reglab.errors import ReglabError
from reglab.stages import run_stage
from reglab.tracking import resolve_uri


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise ReglabError("usage: python -m reglab.stages.evaluate <variant>[@<seed>]")
    key = argv[0]
    config = load_params()
    config.variant(evaluation.parse_run_key(key)[0])  # an unknown variant fails before any work
    paths = config.paths
    result = evaluation.evaluate_variant(
        Path(paths.models, key),
        load_splits(paths.processed),
        class_names=config.data.class_names,
        batch_size=config.evaluation.batch_size,
        calibration_bins=config.evaluation.calibration_bins,
        sparsity_threshold=config.tracking.sparsity_threshold,
    )
    plots = Path(paths.plots)
    evaluation.write_outputs(
        result, Path(paths.eval, f"{key}.json"), plots / "confusion" / f"{key}.csv"
    )
    evaluation.log_report(result.report, resolve_uri(config.tracking.uri))


if __name__ == "__main__":
    run_stage(main)
