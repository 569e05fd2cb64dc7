"""The benchmark's smoke run: `python -m bench.whole --tiny --stage`, one train stage against
one tutorial script (`make bench-tiny` runs the pipeline mode too).

It runs as a subprocess, as a user runs it; the test reads the JSON report and the
table it prints, and checks that every figure is a real measurement.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.project_copy import clean_environment

FASHION_MIRROR = Path("/usr/share/datasets/fashion-mnist")


def finite_positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_tiny_benchmark_prints_real_figures(tmp_path: Path):
    if not FASHION_MIRROR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make dataset)")
    output = tmp_path / "whole.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench.whole", "--tiny", "--stage", "--output", str(output)],
        cwd=PROJECT_ROOT,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["experiment"] == "tiny"
    results = {result["mode"]: result for result in report["results"]}
    # The stage mode only: the pipeline mode's pair (a dvc repro of every variant
    # against one script each) is the same measurement over more processes.
    assert set(results) == {"stage"}
    printed = completed.stdout
    for mode, result in results.items():
        assert result["target"] == {"stage": 1.10, "pipeline": 1.30}[mode]
        for side in ("bare", "project"):
            (sample,) = result["samples"][side]  # --tiny: one pair
            assert finite_positive(sample["wall_s"]), (mode, side, sample)
            assert finite_positive(sample["cpu_s"]), (mode, side, sample)
            # Both sides did real work: a TensorFlow process takes seconds, not a blink.
            assert sample["wall_s"] > 1.0, (mode, side, sample)
        bare = result["samples"]["bare"][0]
        # One tutorial script per variant of the tiny experiment, each with its own
        # test evaluation inside its wall time.
        assert bare["scripts"] == (5 if mode == "pipeline" else 1)
        assert 0 < bare["test_s"] < bare["wall_s"]
        assert bare["wall_without_test_s"] == pytest.approx(bare["wall_s"] - bare["test_s"])
        for figures in (result, result["bare_without_test"], result["cpu"]):
            ratio = figures["ratio_of_medians"]
            assert finite_positive(ratio), (mode, figures)
            assert ratio == pytest.approx(figures["project_median_s"] / figures["bare_median_s"])
            assert figures["pair_ratios"] == [pytest.approx(ratio)]
        # The table shows the same figures as the JSON.
        table = printed[printed.index(f"{mode}: ") :]
        assert f"ratio of medians {result['ratio_of_medians']:.3f}" in table
        assert f"(median {result['project_median_s']:.1f})" in table
        assert re.search(
            rf"CPU time: .*ratio of medians {result['cpu']['ratio_of_medians']:.3f}", table
        )
    assert f"JSON: {output}" in printed
