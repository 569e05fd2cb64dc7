"""The README's `reglab exps`: one row per experiment, each variant's test
accuracy readable in a 120-column terminal, from a real `dvc exp show --json`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# The full tier: real DVC experiments.
pytestmark = pytest.mark.slow

DVC = str(Path(sys.executable).with_name("dvc"))
GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def write(root: Path, key: str, accuracy: float) -> None:
    path = root / "reports/metrics" / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'{{"test_accuracy": {accuracy}, "test_data_loss": 0.6, "ece": 0.05}}\n')


def test_one_row_per_experiment_with_each_variants_accuracy_at_120_columns(tmp_path):
    env = {**os.environ, "COLUMNS": "120"}

    def run(*command: str) -> str:
        return subprocess.run(
            command, cwd=tmp_path, env=env, check=True, capture_output=True, text=True
        ).stdout

    run("git", "init", "-q")
    run(DVC, "init", "-q")
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - reports/metrics\n")
    variants = ["baseline", "dropout", "l1", "l1_l2", "l2"]
    for i, variant in enumerate(variants):
        write(tmp_path, f"{variant}@42", 0.79 + i / 1000)
    run("git", "add", "-A")
    run(*GIT, "commit", "-qm", "first run")
    write(tmp_path, "l2@42", 0.81)
    write(tmp_path, "l2@7", 0.83)
    run("git", "add", "reports")
    run(DVC, "exp", "save", "-n", "strong-l2")

    shown = run(sys.executable, "-m", "reglab", "exps").splitlines()
    assert all(len(line) <= 120 for line in shown)
    header, workspace, commit, experiment = shown
    assert header.split()[-5:] == variants
    assert commit.split()[1:] == ["0.7900", "0.7910", "0.7920", "0.7930", "0.7940"]
    assert experiment.split() == ["strong-l2", "0.7900", "0.7910", "0.7920", "0.7930",
                                  "0.8200", "(2)"]  # fmt: skip
    assert workspace.startswith("workspace")
