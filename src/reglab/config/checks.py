"""Declarative bounds for config dataclasses, and the walk that checks them.

Each section of the config is a dataclass. A field that needs a range or a
fixed set of values declares it with :func:`bounded`; :func:`check` walks a
built config tree and raises one :class:`ConfigError` naming the dotted key,
the bad value and the rule, so a user knows exactly what to change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from reglab.core.errors import ReglabError


class ConfigError(ReglabError, ValueError):
    """A config value is invalid. The message is one line naming key and value."""


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Any = dataclasses.MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | None = None,
    each_choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field with bounds that :func:`check` enforces.

    ``choices`` restricts the value itself, ``each_choices`` every element of a
    list value.
    """
    rules = {
        key: value
        for key, value in dict(
            ge=ge, gt=gt, le=le, lt=lt, choices=choices, each_choices=each_choices
        ).items()
        if value is not None
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"rules": rules})
    return dataclasses.field(default=default, metadata={"rules": rules})


def _violation(value: Any, rules: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    if "choices" in rules and value not in rules["choices"]:
        return f"must be one of {list(rules['choices'])}"
    if "each_choices" in rules:
        bad = [item for item in value if item not in rules["each_choices"]]
        if bad:
            return f"has {bad}; each item must be one of {list(rules['each_choices'])}"
    if "ge" in rules and value < rules["ge"]:
        return f"must be >= {rules['ge']}"
    if "gt" in rules and value <= rules["gt"]:
        return f"must be > {rules['gt']}"
    if "le" in rules and value > rules["le"]:
        return f"must be <= {rules['le']}"
    if "lt" in rules and value >= rules["lt"]:
        return f"must be < {rules['lt']}"
    return None


def check(node: Any, prefix: str = "") -> None:
    """Check every bounded field in a dataclass tree (dicts and lists included)."""
    if dataclasses.is_dataclass(node):
        for field in dataclasses.fields(node):
            key = f"{prefix}.{field.name}" if prefix else field.name
            value = getattr(node, field.name)
            problem = _violation(value, field.metadata.get("rules", {}))
            if problem:
                raise ConfigError(f"{key}={value!r}: {problem}")
            check(value, key)
        validate = getattr(node, "validate", None)
        if callable(validate):
            try:
                validate()
            except ConfigError:
                raise
            except ValueError as error:
                raise ConfigError(f"{prefix}: {error}" if prefix else str(error)) from None
    elif isinstance(node, Mapping):
        for key, value in node.items():
            check(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            check(value, f"{prefix}[{index}]")
