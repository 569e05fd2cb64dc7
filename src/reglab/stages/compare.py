"""DVC stage `compare`: leaderboard, summary and figures across all variants.

Reads only files (eval reports, histories, weights files): no model is
loaded, so this stage never imports TensorFlow or Keras.
"""

import dataclasses
from pathlib import Path

from reglab import report
from reglab.config.compose import load_params
from reglab.core.errors import ReglabError
from reglab.core.io import write_atomic
from reglab.stages import run_stage
from reglab.tracking import resolve_uri
from reglab.tune.best import with_best_variants


def main(argv: list[str]) -> None:
    if argv:
        raise ReglabError("usage: python -m reglab.stages.compare")
    config = with_best_variants(load_params())  # each search's <search>_best too
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
    report.log_comparison(comparison, resolve_uri(config.tracking.uri), config.tracking.experiment)


if __name__ == "__main__":
    run_stage(main)
