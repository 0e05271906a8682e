"""The benchmarks stay runnable after the code moves: every name a bench script imports from the
project (at module level or inside a function, where a run would only fail minutes in) exists."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
PROJECT = ("adapler", "adapler_pipelines", "adapler_deploy", "adapler_cli")


def project_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of each ``from <project module> import name`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_project_name_a_benchmark_imports_exists(script):
    missing = [
        f"{script.name}:{line}: {module}.{name}"
        for module, name, line in project_imports(script)
        if not hasattr(importlib.import_module(module), name)
    ]
    assert not missing, missing
