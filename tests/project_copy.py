"""A copy of the project in a temporary folder, configured like a user would, under git.

The end-to-end tests run the real `dvc` and `mlflow` commands in such a copy,
never in the checkout itself.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.workspace import clean_environment, copy_files

GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@t"]


def copy_project(root: Path) -> Path:
    """The project's files in ``root``; configure it, then :func:`git_init`."""
    return copy_files(root)


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


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without MLflow/DVC settings, the venv's tools first, plus ``extra``."""
    return {**clean_environment(), **extra}


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
