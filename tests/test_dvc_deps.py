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
