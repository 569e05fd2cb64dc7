"""A throw-away copy of the project, as a fresh clone with the local changes would be.

The end-to-end tests and the benchmark's `dvc repro` timing run the real
pipeline in such a copy, so the working tree's own outputs are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def project_files() -> list[str]:
    """Tracked and not-ignored files: what a fresh clone with local changes would hold."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [name for name in listed if name and (PROJECT_ROOT / name).is_file()]


def clean_environment() -> dict[str, str]:
    """The caller's environment without MLflow or DVC settings that would redirect runs,
    with this interpreter's scripts (dvc, mlflow, reglab) first on PATH."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))
    }
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def copy_files(destination: Path) -> Path:
    """The project's files (as :func:`project_files` lists them) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    return destination


def copy_project(
    destination: Path,
    overrides: list[str] | None = None,
    files: Mapping[str, str] | None = None,
) -> Path:
    """Copy the project into ``destination``, add or replace ``files`` (relative path ->
    text), compose params.yaml with ``overrides`` and commit it all in a new git
    repository (DVC experiments need a commit)."""
    copy_files(destination)
    for name, text in (files or {}).items():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        (destination / name).write_text(text)
    env = clean_environment()
    commands = [
        [sys.executable, "-m", "reglab", "compose", "--output", "params.yaml", *(overrides or [])],
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        [
            "git",
            "-c",
            "user.name=reglab",
            "-c",
            "user.email=reglab@localhost",
            "commit",
            "-qm",
            "copy",
        ],
    ]
    for command in commands:
        subprocess.run(command, cwd=destination, env=env, check=True, capture_output=True)
    return destination
