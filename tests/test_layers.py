"""The layering rules, checked by import-linter on the import graph of the installed packages (every
import, the ones inside functions too): the contracts live in pyproject.toml
(``[tool.importlinter]``), and ``lint-imports`` from the repository root runs the same check."""

from __future__ import annotations

import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


def _contracts() -> list[dict]:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]


def test_the_contracts_state_the_layering_rules():
    forbidden = {
        frozenset(c["source_modules"]): set(c["forbidden_modules"]) for c in _contracts() if c["type"] == "forbidden"
    }
    assert forbidden[frozenset({"adapler"})] >= {"ray", "mlflow", "adapler_pipelines", "adapler_deploy", "adapler_cli"}
    assert any(
        {"adapler_pipelines", "adapler_deploy"} <= sources and "adapler_cli" in modules
        for sources, modules in forbidden.items()
    )
    layers = next(c["layers"] for c in _contracts() if c["type"] == "layers")
    assert layers[0] == "adapler_cli" and layers.index("adapler") > layers.index("adapler_pipelines")


def test_import_contracts_are_kept(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = lint_imports(config_filename=str(PYPROJECT), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, f"an import contract is broken (pyproject.toml, [tool.importlinter]):\n{report}"
