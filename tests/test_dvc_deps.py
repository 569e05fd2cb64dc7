"""Each DVC stage's deps cover every module of src/reglab that its command imports.

Otherwise editing such a module would re-run nothing and `dvc repro` would keep
results computed by old code. The closure follows every import statement in
the module (function-level imports too) with `ast`, within the reglab package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

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
            found.add(source)
            # `from reglab import tracking`: the names may be submodules.
            found.update(f"{source}.{alias.name}" for alias in node.names)
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


def stages() -> dict[str, dict]:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def stage_body(stage: dict) -> dict:
    return stage.get("do", stage)  # foreach stages nest their body under `do`


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == Path(dep) or Path(dep) in path.parents for dep in deps)


PYTHON_STAGES = {
    name: stage_body(stage)["cmd"].split()[2]
    for name, stage in stages().items()
    if stage_body(stage)["cmd"].startswith("python -m reglab.")
}


def test_every_stage_runs_a_reglab_module():
    assert set(PYTHON_STAGES) == set(stages())
    assert PYTHON_STAGES["train"] == "reglab.stages.train"


def test_the_closure_follows_indirect_imports():
    closure = {str(path) for path in import_closure("reglab.stages.train")}
    # train -> runner -> data.prepare (load_splits) -> data.idx: two steps away.
    assert "src/reglab/train/run.py" in closure
    assert "src/reglab/data/prepare.py" in closure
    assert "src/reglab/data/idx.py" in closure
    assert "src/reglab/__init__.py" in closure


@pytest.mark.parametrize("stage", sorted(PYTHON_STAGES))
def test_stage_deps_cover_its_import_closure(stage):
    deps = [dep for dep in stage_body(stages()[stage])["deps"] if not dep.startswith("${")]
    missing = sorted(
        str(path) for path in import_closure(PYTHON_STAGES[stage]) if not covered(path, deps)
    )
    assert not missing, f"dvc.yaml stage {stage!r} misses deps: {missing}"


@pytest.mark.parametrize("stage", sorted(PYTHON_STAGES))
def test_stage_deps_name_only_code_it_imports(stage):
    """No stale entry: every listed source file or folder holds code the stage imports."""
    deps = [dep for dep in stage_body(stages()[stage])["deps"] if dep.startswith("src/")]
    closure = import_closure(PYTHON_STAGES[stage])
    unused = [dep for dep in deps if not any(covered(path, [dep]) for path in closure)]
    assert not unused, f"dvc.yaml stage {stage!r} lists code it does not import: {unused}"
