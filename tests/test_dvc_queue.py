"""`dvc exp run --queue -S '...=a,b,c'` queues a sweep, one experiment per value (README)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.test_pipeline_e2e import project_files

pytestmark = pytest.mark.slow


def test_queue_a_strength_sweep(tmp_path: Path):
    for name in project_files():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

    def run(*command: str) -> str:
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    run("git", "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
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
