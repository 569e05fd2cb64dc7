"""`dvc exp run --queue -S '...=a,b,c'` queues a sweep, one experiment per value (README)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.project_copy import clean_environment, copy_project

pytestmark = pytest.mark.slow


def test_queue_a_strength_sweep(tmp_path: Path):
    copy_project(tmp_path)
    env = clean_environment()

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run("dvc", "exp", "run", "--queue", "-S", "variants.l2.kernel.l2=1e-4,1e-3,1e-2")
    status = run("dvc", "queue", "status")
    assert status.count("Queued") == 3, status
    shown = json.loads(run("dvc", "exp", "show", "--json"))
    strengths = set()
    for entry in shown:
        for experiment in entry.get("experiments") or []:
            for revision in experiment.get("revs", []):
                params = revision["data"]["params"]["params.yaml"]["data"]
                strengths.add(params["variants"]["l2"]["kernel"]["l2"])
    assert strengths == {1e-4, 1e-3, 1e-2}
    run("dvc", "queue", "remove", "--all")
