"""One row per DVC experiment with each variant's test accuracy, from ``dvc exp show --json``.

``dvc exp show`` puts every metric of every run in its own column (one metrics
file per variant and seed), which no terminal shows whole. This prints a table
a 120-column terminal holds: a row per commit and experiment, a column per
variant with its mean over the seeds that experiment ran (the seed count in
brackets when there are several)::

    reglab exps                  # test_accuracy
    reglab exps test_data_loss   # any headline metric
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from reglab.config.paths import SEED_SEPARATOR
from reglab.core.errors import ReglabError


def experiment_rows(shown: list[Mapping[str, Any]]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, data) for the workspace, each commit and each experiment on it, in DVC's order."""
    for entry in shown:
        rev = str(entry["rev"])
        name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
        yield name, entry.get("data") or {}
        for experiment in entry.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                label = rev.get("name") or experiment.get("name") or str(rev["rev"])[:7]
                yield f"  {label}", rev.get("data") or {}


def variant_means(data: Mapping[str, Any], metric: str) -> dict[str, tuple[float, int]]:
    """{variant: (mean of ``metric`` over its seeds, seed count)} from the metrics files
    named ``<variant>@<seed>.json``; files DVC could not read are left out."""
    values: dict[str, list[float]] = {}
    for path, content in (data.get("metrics") or {}).items():
        stem = PurePosixPath(path).stem
        value = (content.get("data") or {}).get(metric)
        if SEED_SEPARATOR not in stem or not isinstance(value, int | float):
            continue
        values.setdefault(stem.rsplit(SEED_SEPARATOR, 1)[0], []).append(float(value))
    return {variant: (sum(v) / len(v), len(v)) for variant, v in values.items()}


def table(shown: list[Mapping[str, Any]], metric: str = "test_accuracy") -> str:
    rows = [(name, variant_means(data, metric)) for name, data in experiment_rows(shown)]
    variants: list[str] = []
    for _, means in rows:
        variants.extend(variant for variant in means if variant not in variants)
    if not variants:
        raise ReglabError(f"no {metric} in any experiment's metrics; run the pipeline first")

    def cell(mean_count: tuple[float, int] | None) -> str:
        if mean_count is None:
            return "-"
        mean, count = mean_count
        return f"{mean:.4f}" + (f" ({count})" if count > 1 else "")

    body = [[name, *(cell(means.get(v)) for v in variants)] for name, means in rows]
    header = [f"experiment ({metric})", *variants]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(
            text.ljust(width) if i == 0 else text.rjust(width)
            for i, (text, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in [header, *body]
    ]
    return "\n".join(lines) + "\n"


def dvc_exp_show() -> list[Mapping[str, Any]]:
    dvc = shutil.which("dvc") or str(Path(sys.executable).with_name("dvc"))
    result = subprocess.run(
        [dvc, "exp", "show", "--json"], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise ReglabError(f"dvc exp show --json failed: {result.stderr.strip()}")
    return json.loads(result.stdout)
