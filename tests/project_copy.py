"""A copy of the project in a temporary folder, as a fresh clone with the local changes
would be, configured like a user would, under git.

The end-to-end tests (and bench/whole.py) run the real `dvc` and `mlflow` commands in
such a copy, never in the checkout itself, so its own outputs are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@t"]


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


def clean_env(**extra: str) -> dict[str, str]:
    """:func:`clean_environment` plus ``extra``."""
    return {**clean_environment(), **extra}


def copy_files(destination: Path) -> Path:
    """The project's files (as :func:`project_files` lists them) in ``destination``, not
    yet configured or under git (see :func:`select_experiment`, :func:`git_init`)."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in project_files():
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    return destination


def copy_project(
    destination: Path,
    overrides: Sequence[str] = (),
    files: Mapping[str, str] | None = None,
) -> Path:
    """The project in ``destination`` with ``files`` added or replaced (relative path ->
    text), params.yaml composed with ``overrides``, all committed in a new git
    repository (DVC experiments need a commit)."""
    copy_files(destination)
    for name, text in (files or {}).items():
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        (destination / name).write_text(text)
    env = clean_environment()
    commands = [
        [sys.executable, "-m", "reglab", "compose", "--output", "params.yaml", *overrides],
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", *GIT_USER, "commit", "-qm", "copy"],
    ]
    for command in commands:
        subprocess.run(command, cwd=destination, env=env, check=True, capture_output=True)
    return destination


def select_experiment(
    root: Path,
    name: str,
    variants: Mapping[str, str],
    settings: str = "",
    base: str = "tiny",
    overrides: Sequence[str] = (),
) -> None:
    """conf/variants/<name>.yaml and conf/experiment/<name>.yaml, chosen in conf/config.yaml.

    ``variants`` maps a variant's name to its recipe (on top of ``none``);
    ``overrides`` are more defaults-list overrides (``/data: digits``);
    ``settings`` is YAML the preset adds after its defaults.
    """
    (root / f"conf/variants/{name}.yaml").write_text(
        "# @package variants\ndefaults:\n"
        + "".join(f"  - /regularizer@{key}: [none, {recipe}]\n" for key, recipe in variants.items())
    )
    (root / f"conf/experiment/{name}.yaml").write_text(
        f"# @package _global_\ndefaults:\n  - {base}\n  - override /variants: {name}\n"
        + "".join(f"  - override {override}\n" for override in overrides)
        + settings
    )
    config = (root / "conf/config.yaml").read_text()
    (root / "conf/config.yaml").write_text(
        config.replace("  - experiment: null", f"  - experiment: {name}")
    )


def run(
    command: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 900
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def compose_params(root: Path, env: Mapping[str, str]) -> None:
    run([sys.executable, "-m", "reglab", "compose", "--output", "params.yaml"], root, env)


def git_commit_all(root: Path, env: Mapping[str, str], message: str) -> None:
    run(["git", "add", "-A"], root, env)
    run(["git", *GIT_USER, "commit", "-qm", message], root, env)


def git_init(root: Path, env: Mapping[str, str]) -> None:
    run(["git", "init", "-q", "-b", "main"], root, env)
    git_commit_all(root, env, "init")
