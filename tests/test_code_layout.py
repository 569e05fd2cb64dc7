"""The house stays readable: small modules, and one training path that fits a screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "reglab"
MAX_MODULE_LINES = 450
MAX_TRAIN_VARIANT_LINES = 60


def test_no_module_is_over_450_lines():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert len(sizes) > 30  # the package was found
    too_long = {name: lines for name, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert not too_long, f"split these modules: {too_long}"


def test_train_variant_reads_in_one_screen():
    tree = ast.parse((PACKAGE / "runner.py").read_text())
    (function,) = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "train_variant"
    ]
    lines = function.end_lineno - function.lineno + 1
    assert 20 < lines < MAX_TRAIN_VARIANT_LINES, f"train_variant is {lines} lines"
