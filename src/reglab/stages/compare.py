"""DVC stage `compare`: leaderboard, summary and figures across all variants.

Reads only files (eval reports, histories, weights files): no model is
loaded, so this stage never imports TensorFlow or Keras.
"""

import dataclasses
import json
from pathlib import Path

from reglab import report, tracking
from reglab.config.paths import RunKey, run_record_file
from reglab.core.errors import ReglabError
from reglab.core.io import write_atomic
from reglab.stages import read_config, run_stage, run_tags
from reglab.tune.best import with_best_variants


def run_ids(runs: Path, summaries: list[report.VariantSummary]) -> list[str]:
    """The MLflow runs of the compared models, from the records their train stages wrote
    on this machine (outside DVC's outputs); a model pulled from a remote has none."""
    ids = []
    for row in summaries:
        for seed in row.seeds:
            path = run_record_file(runs, RunKey(row.variant, seed))
            if path.exists():
                ids.append(json.loads(path.read_text())["mlflow_run_id"])
    return ids


def main(argv: list[str]) -> None:
    if argv:
        raise ReglabError("usage: python -m reglab.stages.compare")
    config = with_best_variants(read_config())  # each search's <search>_best too
    paths = config.paths
    reports = report.load_reports(Path(paths.eval), list(config.variants), config.seeds)
    comparison = report.compare(
        reports,
        report.load_histories(Path(paths.history), reports),
        report.load_first_layer_kernels(Path(paths.weights), reports),
        {name: dataclasses.asdict(recipe) for name, recipe in config.variants.items()},
        figures_dir=Path(paths.figures),
        summary_path=Path(paths.summary),
        dense_histograms=report.load_dense_histograms(Path(paths.weights), reports),
    )
    write_atomic(Path(paths.summary), comparison.markdown)
    plots = Path(paths.plots)
    for name, text in comparison.plot_data.items():
        write_atomic(plots / name, text)
    tracking.log_comparison(
        tracking.resolve_uri(config.tracking.uri),
        config.tracking.experiment,
        run_ids=run_ids(Path(paths.runs), comparison.summaries),
        tags={
            "reglab.stage": "compare",
            "best_variant": comparison.best.variant,
            **report.comparison_tags(comparison),
            **run_tags(),  # a DVC experiment's name; under `mlflow run`, the launcher
        },
        metrics=report.comparison_metrics(comparison),
        summary=comparison.markdown,
        leaderboard=[row.as_dict() for row in comparison.summaries],
        figures=list(comparison.figures.values()),
    )


if __name__ == "__main__":
    run_stage(main)
