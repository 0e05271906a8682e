"""The docs site builds with `mkdocs build --strict` (a broken link, a missing page or a docstring
mkdocstrings cannot render fails), its references are generated from the code, and the
troubleshooting page covers every error the CLI reports as one line."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocs_gen_files")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out


def test_the_site_builds_strict_with_every_page(site):
    for page in (
        "index",
        "getting-started",
        "your-data",
        "serving",
        "cluster",
        "backbones",
        "troubleshooting",
        "how-it-works",
        "benchmarks",
        "reference/configuration",
        "reference/cli",
        "reference/api",
    ):
        assert (site / page / "index.html").is_file() or (site / f"{page}.html").is_file(), page


def test_the_configuration_reference_lists_every_key(site):
    from adapler_pipelines.config import PipelineConfig

    page = (site / "reference" / "configuration" / "index.html").read_text()

    def keys(cls, prefix=""):
        for field in dataclasses.fields(cls):
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            if dataclasses.is_dataclass(default):
                yield from keys(type(default), f"{prefix}{field.name}.")
            else:
                yield f"{prefix}{field.name}"

    missing = [key for key in keys(PipelineConfig) if f"<code>{key}</code>" not in page]
    assert not missing, missing
    assert "speed/accuracy knob" in page  # stage2.phi's comment in the source made it in


def test_the_cli_reference_lists_every_subcommand(site):
    from adapler_cli.main import build_parser

    page = (site / "reference" / "cli" / "index.html").read_text()
    commands = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, parser in commands.items():
        assert f'id="adapler-{name}"' in page, name
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, (name, option)


def test_troubleshooting_covers_every_error_the_cli_reports():
    from adapler_cli.errors import HEAVY, LIGHT

    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    for _, name in (*LIGHT, *HEAVY, ("adapler_cli.errors", "UserError")):
        assert f"### {name}" in page, name


def _results_values() -> list[float]:
    values: list[float] = []

    def walk(node):
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            values.append(float(node))

    for path in (ROOT / "bench" / "results").rglob("*.json"):
        walk(json.loads(path.read_text()))
    return values


def test_every_figure_in_the_readme_is_in_a_results_file():
    """Decimal figures outside code blocks (links, addresses and the licence name aside) each
    appear, at the precision written, in some bench/results/*.json."""
    text = re.sub(r"```.*?```", "", (ROOT / "README.md").read_text(), flags=re.S)
    text = re.sub(r"\(https?://[^)]*\)|\b\d+(\.\d+){2,}\b|Apache-2\.0", "", text)
    values = _results_values()
    missing = [
        figure
        for figure in sorted(set(re.findall(r"\d+\.\d+", text)))
        if not any(abs(round(v, len(figure.split(".")[1])) - float(figure)) < 1e-9 for v in values)
    ]
    assert not missing, missing


def test_no_dated_narrative_in_the_readme_or_the_docs():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    dated = [
        f"{page.relative_to(ROOT)}: {match}"
        for page in pages
        for match in re.findall(r"\b20\d\d-\d\d-\d\d\b", page.read_text())
    ]
    assert not dated, dated
