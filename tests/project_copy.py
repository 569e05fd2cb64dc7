"""A copy of the project in a temporary folder, configured like a user would, under git.

The end-to-end tests run the real `dvc` and `mlflow` commands in such a copy,
never in the checkout itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.conftest import PROJECT_ROOT

GIT_USER = ["-c", "user.name=t", "-c", "user.email=t@t"]


def project_files() -> list[str]:
    """What git would ship: tracked files and untracked ones that are not ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return [name for name in listed if name and (PROJECT_ROOT / name).is_file()]


def copy_project(root: Path) -> Path:
    for name in project_files():
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, target)
    return root


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
    """This environment without MLflow/DVC settings, with the venv's tools first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


def run(
    command: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 900
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, cwd=cwd, env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result


def compose_params(root: Path, env: Mapping[str, str]) -> None:
    run([sys.executable, "-m", "reglab.config", "compose", "--output", "params.yaml"], root, env)


def git_commit_all(root: Path, env: Mapping[str, str], message: str) -> None:
    run(["git", "add", "-A"], root, env)
    run(["git", *GIT_USER, "commit", "-qm", message], root, env)


def git_init(root: Path, env: Mapping[str, str]) -> None:
    run(["git", "init", "-q", "-b", "main"], root, env)
    git_commit_all(root, env, "init")
