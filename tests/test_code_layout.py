"""The house shows its architecture: layers whose imports point down, and no cycle.

The package is grouped by concern, one folder a layer, from the bottom:

    core < config < data < model < evaluate < report < tracking < train < tune < entry

where the entry layer is ``reglab.stages`` and ``reglab.cli``. A module may import
its own layer and the ones below, never one above; no two modules import each
other, directly or around a loop; only the entry layer reads the process's
environment and arguments; MLflow is imported by ``tracking`` alone and
matplotlib by ``report`` alone.
"""

from __future__ import annotations

import ast

import pytest

from tests.code_graph import module_imports, package_modules

LAYERS = (
    "core", "config", "data", "model", "evaluate", "report", "tracking", "train", "tune", "entry"
)  # fmt: skip
ENTRY = {"stages", "cli", "__main__"}
MODULES = package_modules()


def layer_of(module: str) -> str | None:
    """The layer of ``reglab.<folder>...``; None for the package's own ``__init__``."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    return "entry" if parts[1] in ENTRY else parts[1]


def test_every_module_belongs_to_a_layer():
    assert len(MODULES) > 40
    strays = [name for name in MODULES if name != "reglab" and layer_of(name) not in LAYERS]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


def test_imports_point_down():
    upward = []
    for name in MODULES:
        own = layer_of(name)
        for imported in module_imports(name):
            other = layer_of(imported)
            if own is None or other is None:
                continue
            if LAYERS.index(other) > LAYERS.index(own):
                upward.append(f"{name} ({own}) imports {imported} ({other})")
    assert not upward, "\n".join(upward)


def import_cycles() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    graph = {name: sorted(module_imports(name) - {name}) for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for neighbour in graph.get(node, []):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in on_stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycle():
    # A package's __init__ importing its own submodules is how a package re-exports;
    # the submodules importing the package back would be the cycle, and is caught.
    assert not import_cycles()


def test_the_cycle_check_finds_a_cycle(monkeypatch):
    import tests.code_graph as graph

    real = graph.module_imports
    fake = {"reglab.core.io": {"reglab.core.errors"}, "reglab.core.errors": {"reglab.core.io"}}
    monkeypatch.setattr(
        "tests.test_code_layout.module_imports", lambda name: fake.get(name) or real(name)
    )
    assert ["reglab.core.errors", "reglab.core.io"] in import_cycles()


def third_party_imports(name: str) -> set[str]:
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(("library", "layer"), [("mlflow", "tracking"), ("matplotlib", "report")])
def test_one_layer_imports_the_library(library, layer):
    importers = [name for name in MODULES if library in third_party_imports(name)]
    assert importers, f"nobody imports {library}"
    elsewhere = [name for name in importers if layer_of(name) != layer]
    assert not elsewhere, f"{library} imported outside {layer}: {elsewhere}"


def attribute_uses(name: str) -> set[str]:
    """Dotted names such as ``os.environ`` or ``sys.argv`` that module ``name`` uses."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            found.add(f"{node.value.id}.{node.attr}")
    return found


PROCESS_STATE = {"os.environ", "os.getenv", "os.putenv", "sys.argv", "os.unsetenv"}
PROCESS_TRICKS = {"os._exit", "sys.meta_path", "os.dup2", "atexit.register"}


# The named exceptions to the rule, one function each, and why.
ENVIRONMENT_READERS = {
    # Credentials are masked in every process that logs, a search's Ray workers
    # included (they run no entry point of ours), and in every log line, whichever
    # library writes it: neither can be handed the values.
    ("reglab.tracking.secrets", "environment_secrets"),
}


def process_state_uses(name: str) -> set[tuple[str | None, str]]:
    """(top-level function or None, ``os.environ``-like name) for each use in module ``name``."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for statement in tree.body:
        function = statement.name if isinstance(statement, ast.FunctionDef) else None
        for node in ast.walk(statement):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                dotted = f"{node.value.id}.{node.attr}"
                if dotted in PROCESS_STATE:
                    found.add((function, dotted))
    return found


def test_only_the_entry_layer_reads_the_environment_and_arguments():
    readers = {
        name: sorted(uses, key=str)
        for name in MODULES
        if layer_of(name) != "entry"
        if (
            uses := {
                (function, dotted)
                for function, dotted in process_state_uses(name)
                if (name, function) not in ENVIRONMENT_READERS
            }
        )
    }
    assert not readers, readers
    # Each exception still reads the environment, and only it in its module.
    for name, function in ENVIRONMENT_READERS:
        assert {use[0] for use in process_state_uses(name)} == {function}, name


def test_no_process_tricks():
    tricks = {
        name: sorted(attribute_uses(name) & PROCESS_TRICKS)
        for name in MODULES
        if attribute_uses(name) & PROCESS_TRICKS
    }
    assert not tricks, tricks
