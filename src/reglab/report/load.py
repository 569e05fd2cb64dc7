"""Loading the comparison's inputs: eval reports, per-epoch histories, first-layer weights.

All three are files the earlier stages wrote, named by run key (``<variant>@<seed>``):
``<paths.eval>/<key>.json``, ``<paths.history>/<key>.csv`` and ``<paths.weights>/<key>.json``.
Nothing here loads a model, so the compare stage runs without TensorFlow.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reglab.config.paths import SEED_SEPARATOR, RunKey, RunKeyError, history_file
from reglab.core.errors import ReglabError
from reglab.core.io import read_json_object

log = logging.getLogger(__name__)

REPORT_KEYS = ("variant", "seed", "test_accuracy", "test_data_loss", "generalization_gap")
WEIGHTS_KEYS = ("variant", "seed", "layer", "shape", "values")


class ReportError(ReglabError):
    """The inputs of the compare stage are missing or inconsistent."""


def load_reports(
    eval_dir: Path, variants: Sequence[str], seeds: Sequence[int] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Eval reports by variant, each list sorted by seed.

    Reads ``<variant>@<seed>.json``. Each report gets a ``run_key`` (its file stem)
    so its history and weights can be found. With ``seeds`` given, exactly those
    seeds must be present and other seeds' files are ignored (a stale report from
    an earlier seeds list does not leak in).
    """
    reports: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        legacy = eval_dir / f"{variant}.json"
        if legacy.exists():
            log.warning("%s: ignored; reports are named <variant>@<seed>.json", legacy)
        by_seed: dict[int, dict[str, Any]] = {}
        for path in sorted(eval_dir.glob(f"{variant}{SEED_SEPARATOR}*.json")):
            try:
                name, file_seed = RunKey.parse(path.stem)
            except RunKeyError as error:
                raise ReportError(f"{path}: {error}") from None
            report = read_json_object(path, REPORT_KEYS, ReportError, "its evaluate stage")
            if report["variant"] != variant or name != variant:
                raise ReportError(
                    f"{path}: holds variant {report['variant']!r}, expected {variant!r}"
                )
            if file_seed != report["seed"]:
                raise ReportError(f"{path}: holds seed {report['seed']}, its name says {file_seed}")
            if seeds is None or file_seed in seeds:
                by_seed[file_seed] = {**report, "run_key": path.stem}
        missing = sorted(set(seeds) - set(by_seed)) if seeds is not None else []
        if not by_seed or missing:
            what = f"seeds {missing}" if missing else "report"
            raise ReportError(
                f"{eval_dir}: no {what} for variant {variant!r}; run its evaluate stage first"
            )
        reports[variant] = [by_seed[seed] for seed in sorted(by_seed)]
    return reports


def load_history(path: Path) -> dict[str, list[float]]:
    """A per-epoch history CSV as columns of floats."""
    if not path.exists():
        raise ReportError(f"{path}: not found; run the train stage for this variant")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "epoch" not in rows[0] or "val_data_loss" not in rows[0]:
        raise ReportError(
            f"{path}: needs a header with epoch and val_data_loss and one row per epoch"
        )
    return {column: [float(row[column]) for row in rows] for column in rows[0]}


def load_histories(
    history_dir: Path, reports: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, list[dict[str, list[float]]]]:
    """The history of every report's run (``<history_dir>/<run_key>.csv``), by variant."""
    return {
        variant: [load_history(history_file(history_dir, run["run_key"])) for run in runs]
        for variant, runs in reports.items()
    }


def load_weights(path: Path) -> dict[str, Any]:
    """One run's first-layer weights file (written by the evaluate stage), checked."""
    data = read_json_object(path, WEIGHTS_KEYS, ReportError, "its evaluate stage")
    if int(np.prod(data["shape"])) != len(data["values"]):
        raise ReportError(
            f"{path}: {len(data['values'])} values for shape {data['shape']}; "
            "re-run its evaluate stage"
        )
    return data


def load_first_layer_kernels(
    weights_dir: Path, reports: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, np.ndarray]:
    """The first-layer kernel of each variant's lowest seed (one run per variant suffices
    to show the shape of the weight distribution), from ``<weights_dir>/<run_key>.json``."""
    kernels = {}
    for variant, runs in reports.items():
        data = load_weights(weights_dir / f"{runs[0]['run_key']}.json")
        kernels[variant] = np.asarray(data["values"], dtype=np.float32).reshape(data["shape"])
    return kernels


DENSE_KEYS = ("layer", "shape", "edges", "counts", "zeros")


def load_dense_histograms(
    weights_dir: Path, reports: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """The largest Dense kernel's counts on fixed bins (``largest_dense`` in the weights
    file) of each variant's lowest seed, the run :func:`load_first_layer_kernels` reads.

    A weights file without them (a model with no Dense layer) leaves its variant out.
    """
    histograms = {}
    for variant, runs in reports.items():
        path = weights_dir / f"{runs[0]['run_key']}.json"
        record = load_weights(path).get("largest_dense")
        if record is None:
            log.warning("%s: no largest Dense kernel histogram; %s is left out", path, variant)
            continue
        missing = [key for key in DENSE_KEYS if key not in record]
        if missing or len(record["counts"]) != len(record["edges"]) - 1:
            raise ReportError(
                f"{path}: largest_dense needs {', '.join(DENSE_KEYS)} and one count per bin "
                f"(missing {missing}); re-run its evaluate stage"
            )
        histograms[variant] = record
    return histograms
