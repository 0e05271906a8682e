"""Generate one API page per module of the method (``adapler/``) at build time, rendered from the
docstrings by mkdocstrings. A module added or removed changes the pages; nothing is listed by hand."""

from __future__ import annotations

from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[1]

modules = []
for path in sorted((ROOT / "adapler").rglob("*.py")):
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    modules.append(".".join(parts))
    with mkdocs_gen_files.open(f"reference/api/{modules[-1]}.md", "w") as page:
        page.write(f"# `{modules[-1]}`\n\n::: {modules[-1]}\n")

with mkdocs_gen_files.open("reference/api/index.md", "w") as page:
    page.write("# Python API\n\nThe method, `adapler/` (PyTorch and transformers, no Ray), one page per module, "
               "rendered from the docstrings when the site is built.\n\n")
    page.write("".join(f"- [`{module}`]({module}.md)\n" for module in modules))
