"""The scripts under benchmarks/ are not run by the test suite (they take minutes): at least
every slimtrain name they import must exist, so a refactor cannot leave one broken unseen."""

import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parents[2] / "benchmarks").glob("*.py"))


def slimtrain_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("slimtrain"):
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("slimtrain"):
                    yield alias.name, None


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.name for s in SCRIPTS])
def test_every_slimtrain_import_of_a_benchmark_resolves(script):
    for module, name in slimtrain_imports(script):
        imported = importlib.import_module(module)
        if name is not None:
            assert hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), \
                f"{script.name}: from {module} import {name}"
