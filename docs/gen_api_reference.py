"""Generate one API page per module at build time, rendered from the docstrings by mkdocstrings:
the method (``adapler/``), the Ray stages (``adapler_pipelines``, folder ``pipelines/``) and the
Serve app (``adapler_deploy``, folder ``deploy/``). A module added or removed changes the pages;
nothing is listed by hand."""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"adapler": "adapler", "adapler_pipelines": "pipelines", "adapler_deploy": "deploy"}  # name: folder


def modules(package: str, folder: str) -> list[str]:
    """Dotted names of the package's modules (the package itself for __init__), sorted."""
    names = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = (package, *path.relative_to(ROOT / folder).with_suffix("").parts)
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


with mkdocs_gen_files.open("reference/api/index.md", "w") as index:
    index.write(
        "# Python API\n\nOne page per module, rendered from the docstrings when the site is built: "
        "`adapler` is the method (PyTorch and transformers, no Ray), `adapler_pipelines` its stages on "
        "Ray and the MLflow registry, `adapler_deploy` the Ray Serve app.\n"
    )
    for package, folder in PACKAGES.items():
        index.write(f"\n## `{package}`\n\n")
        for module in modules(package, folder):
            index.write(f"- [`{module}`]({module}.md)\n")
            with mkdocs_gen_files.open(f"reference/api/{module}.md", "w") as page:
                page.write(f"# `{module}`\n\n::: {module}\n")
