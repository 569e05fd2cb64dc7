"""The package's import graph, read with `ast` (function-level imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import PROJECT_ROOT

SRC = PROJECT_ROOT / "src"
PACKAGE = "reglab"


def module_file(name: str) -> Path | None:
    """src/reglab/a/b.py or src/reglab/a/b/__init__.py for 'reglab.a.b'."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, name: str) -> set[str]:
    """Names of the reglab modules ``path`` (module ``name``) imports, as written."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            # `from reglab import tracking`: the names may be submodules; a name that
            # is not one comes from the package itself.
            submodules = {f"{source}.{alias.name}" for alias in node.names}
            found.update(submodules)
            if not all(module_file(item) for item in submodules):
                found.add(source)
    return {item for item in found if item == PACKAGE or item.startswith(PACKAGE + ".")}


def import_closure(module: str) -> set[Path]:
    """Every reglab source file that importing ``module`` executes."""
    files: set[Path] = set()
    pending = [module]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        pending.extend(".".join(parts[:index]) for index in range(1, len(parts)))
        path = module_file(name)
        if path is None:
            continue  # a name imported from a module, not a module itself
        files.add(path.relative_to(PROJECT_ROOT))
        pending.extend(imported_modules(path, name))
    return files


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    modules = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def module_imports(name: str) -> set[str]:
    """The package's modules that module ``name`` imports (names resolved to modules)."""
    path = module_file(name)
    assert path is not None, name
    return {item for item in imported_modules(path, name) if module_file(item) is not None}
