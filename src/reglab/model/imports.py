"""Objects the config names by import path: a user's builder, a user's regularizer.

Naming one runs its module's code, as an import does.
"""

from __future__ import annotations

import importlib
from typing import Any

from reglab.config.checks import ConfigError


def split_path(path: str) -> tuple[str, str]:
    """``package.module.name`` or ``package.module:name`` -> (module, name)."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    return module, name


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
