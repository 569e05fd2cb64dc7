"""Objects the config names by import path: a user's builder, a user's regularizer.

Naming one runs its module's code, as an import does.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reglab.config.checks import ConfigError
from reglab.config.recipes import ModelConfig, RegularizerConfig
from reglab.config.recipes import split_import_path as split_path


def import_object(path: str, key: str) -> Any:
    """The object at ``path``; a failure is one line naming ``key``."""
    module_name, name = split_path(path)
    if not module_name or not name:
        raise ConfigError(f"{key}={path!r}: give package.module.name, e.g. examples.models.resnet")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"{key}={path!r}: module {module_name!r} does not import ({error}); "
            "put it in the project folder (run from there) or install its package"
        ) from None
    found = getattr(module, name, None)
    if found is None:
        raise ConfigError(f"{key}={path!r}: module {module_name!r} has no {name!r}")
    return found


def user_modules(model: ModelConfig, recipes: Sequence[RegularizerConfig] = ()) -> list[str]:
    """The modules of the user's builder and regularizers."""
    paths = [model.builder_path] if model.builtin is None and model.builder_path else []
    paths += [recipe.custom.name for recipe in recipes if recipe.custom.name is not None]
    return sorted({split_path(str(path))[0] for path in paths})


def user_packages(modules: Sequence[str], root: Path) -> list[Path]:
    """The top-level folders (or files) of ``modules`` in the project folder ``root``:
    what a logged model or a cluster's workers need to import them."""
    found = []
    for module in modules:
        top = module.split(".")[0]
        for candidate in (root / top, root / f"{top}.py"):
            if candidate.exists() and candidate not in found:
                found.append(candidate)
    return found
