"""The README's commands in a clone whose folder has a space in its path ("my proj").

A shell splits an unquoted path on the space and GNU make splits target names on
it, so this is where a Makefile's `$(CURDIR)/.venv/bin/python` breaks (`/bin/bash:
.../my: No such file or directory`). A copy of the project in ".../my proj" gets a
real venv from requirements.lock through `make setup` (uv's cache makes it quick;
the bytecode is left to the imports), the tiny digits experiment, and a PATH without
this test's own venv: every tool it runs, it finds through the Makefile. Then what
the user gets: params.yaml, the pipeline's reports and MLflow runs, the plots page,
lint, and a search's Ray workers started from the folder's venv.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

from tests.project_copy import copy_project, git_init, select_experiment

pytestmark = pytest.mark.slow

VARIANT = "baseline@42"


def user_environment() -> dict[str, str]:
    """This environment as a user's shell would have it: no MLflow, DVC or Ray settings,
    no virtual environment (this test's venv off PATH), no outer make's flags; bytecode
    written as modules are first imported (the setup below does not compile it)."""
    own_bins = {Path(sys.executable).parent.absolute()}
    if "VIRTUAL_ENV" in os.environ:
        own_bins.add(Path(os.environ["VIRTUAL_ENV"], "bin").absolute())
    dropped = {"VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in dropped and not key.startswith(("MLFLOW_", "DVC_", "RAY_"))
    }
    path = os.environ.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p and Path(p).absolute() not in own_bins)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def make(root: Path, env: dict[str, str], *args: str, timeout: float = 900) -> str:
    """`make ARGS` in ``root``, as a user types it; its output, or the failure with it."""
    result = subprocess.run(
        ["make", *args], cwd=root, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"make {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, dict[str, str], str]:
    """The project in ".../my proj", set up and run there: `make setup`, `make params`
    and `make run` on the tiny digits experiment (scikit-learn's bundled digits, so the
    Fashion-MNIST `dataset` target is not needed: `-o dataset`)."""
    root = tmp_path_factory.mktemp("space") / "my proj"
    copy_project(root)
    select_experiment(
        root,
        "space",
        {"baseline": "none"},
        overrides=["/data: digits"],
        settings="model:\n  padding: same\n",
    )
    env = user_environment()
    git_init(root, env)
    started = time.monotonic()
    # Bytecode is compiled by the imports instead: a throw-away venv, and about
    # 2.5 minutes less here on two busy cores.
    make(root, env, "setup", "UV_SYNC_FLAGS=")
    print(f"\nmake setup in {root}: {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    make(root, env, "params")
    print(f"make params: {time.monotonic() - started:.0f} s")
    started = time.monotonic()
    output = make(root, env, "-o", "dataset", "run")
    print(f"make run (tiny digits pipeline): {time.monotonic() - started:.0f} s")
    return root, env, output


def test_setup_installs_the_venv_and_the_project_inside_the_folder(project):
    root, env, _ = project
    python = root / ".venv/bin/python"
    where = subprocess.run(
        [python, "-c", "import reglab, dvc; print(reglab.__file__); print(dvc.__file__)"],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert where == [
        str(root / "src/reglab/__init__.py"),
        str(root / ".venv/lib/python3.11/site-packages/dvc/__init__.py"),
    ]
    # Entry points start through /bin/sh (a shebang cannot hold a space).
    for script in ("dvc", "reglab", "mlflow"):
        assert (root / ".venv/bin" / script).read_text().startswith("#!/bin/sh\n"), script


def test_params_holds_the_composed_tiny_config(project):
    root, _, _ = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    assert params["data"]["name"] == "digits"
    assert params["train"]["epochs"] == 1
    assert params["model"]["padding"] == "same"
    assert list(params["variants"]) == ["baseline"]


def test_run_trains_tests_and_compares_inside_the_folder(project):
    root, _, output = project
    ran = {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}
    assert ran == {"check", "download", "preprocess", "train@baseline-42", "compare"}
    metrics = json.loads((root / f"reports/metrics/{VARIANT}.json").read_text())
    assert 0 < metrics["test_accuracy"] <= 1
    report = json.loads((root / f"reports/eval/{VARIANT}.json").read_text())
    assert report["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert report["test_data_loss"] > 0
    assert "baseline" in (root / "reports/summary.md").read_text()


def test_mlflow_store_and_artifacts_live_in_the_folder(project, tmp_path):
    from mlflow import MlflowClient

    root, _, _ = project
    report = json.loads((root / f"reports/eval/{VARIANT}.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run = client.get_run(
        json.loads((root / f".reglab/runs/{VARIANT}.json").read_text())["mlflow_run_id"]
    )
    assert run.info.run_name == VARIANT and run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] == pytest.approx(report["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "model_summary.txt"} <= artifacts
    assert unquote(urlparse(run.info.artifact_uri).path).startswith(f"{root}/mlruns/")
    summary = client.download_artifacts(run.info.run_id, "model_summary.txt", str(tmp_path))
    assert "Conv2D" in Path(summary).read_text()


RAY_WORKER = """
import ray
from reglab.config.compose import load_params
from reglab.tune.engine import ray_connected

@ray.remote
def interpreter():
    import sys
    return sys.executable

with ray_connected(load_params(), None, "sqlite:///mlflow.db"):
    print(ray.get(interpreter.remote(), timeout=120))
"""


def test_a_search_starts_its_ray_workers_from_the_folder(project):
    """Ray starts a worker of a job with a runtime_env (a search's threads and MLflow
    store) through `bash -c`, the interpreter's path unquoted: the search quotes it."""
    root, env, _ = project
    python = root / ".venv/bin/python"
    result = subprocess.run(
        [python, "-c", RAY_WORKER], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == str(python)


def test_plots_writes_the_offline_page(project):
    root, env, _ = project
    make(root, env, "plots")
    page = (root / "dvc_plots/index.html").read_text()
    assert "window.vegaEmbed" in page and "cdn.jsdelivr" not in page
    assert VARIANT in page  # the variant's learning curve and confusion matrix


def test_lint_checks_the_copy(project):
    root, env, _ = project
    output = make(root, env, "lint")
    assert "All checks passed!" in output
    assert "already formatted" in output
