"""Each DVC stage's deps cover every module of src/reglab that its command imports.

Otherwise editing such a module would re-run nothing and `dvc repro` would keep
results computed by old code. The closure follows every import statement in
the module (function-level imports too) with `ast`, within the reglab package.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.code_graph import import_closure
from tests.conftest import PROJECT_ROOT


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


def folder_level(paths: set[Path]) -> set[str]:
    """A layer's folder for each file in it; the package's __init__ and the entry
    modules (one per stage) as files, so editing one stage re-runs only that stage."""
    deps = set()
    for path in paths:
        parts = path.parts  # ("src", "reglab", <layer or file>, ...)
        deps.add(str(path) if len(parts) == 3 or parts[2] == "stages" else "/".join(parts[:3]))
    return deps


@pytest.mark.parametrize("stage", sorted(PYTHON_STAGES))
def test_stage_deps_are_the_folder_level_closure(stage):
    deps = {dep for dep in stage_body(stages()[stage])["deps"] if dep.startswith("src/")}
    assert deps == folder_level(import_closure(PYTHON_STAGES[stage]))


def test_compare_does_not_depend_on_training_code():
    """The compare stage reads files only: editing the training code re-runs the
    train stages, and compare only through their outputs."""
    deps = set(stage_body(stages()["compare"])["deps"])
    assert {"src/reglab/report", "src/reglab/stages/compare.py"} <= deps
    assert not {"src/reglab/train", "src/reglab/tune/search.py", "src/reglab/stages"} & deps
