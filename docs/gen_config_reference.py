"""Generate the configuration reference (reference/configuration.md) at build time.

Walks the config dataclasses (``adapler_pipelines.config.PipelineConfig``, which extends
``adapler.config.ExperimentConfig``): every section, every field with its type, its default and
the comment written above or beside it in the source. Run by mkdocs-gen-files; nothing here is
committed as Markdown, so the page cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tokenize
from io import StringIO
from pathlib import Path

import mkdocs_gen_files
import yaml

from adapler.config import ExperimentConfig, preset_names, resolve_preset
from adapler_pipelines.config import PipelineConfig

FIELD = re.compile(r"^\s+(\w+)\s*:")


def field_comments(cls: type) -> dict[str, str]:
    """{field: its comment}: the comment lines right above a field's line plus its trailing comment."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins
        if not dataclasses.is_dataclass(klass):
            continue
        source = inspect.getsource(klass)
        trailing = {
            tok.start[0]: tok.string.lstrip("# ").strip()
            for tok in tokenize.generate_tokens(StringIO(source).readline)
            if tok.type == tokenize.COMMENT
        }
        above: list[str] = []
        for number, line in enumerate(source.splitlines(), start=1):
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# ").strip())
                continue
            match = FIELD.match(line)
            if match and match.group(1) in {f.name for f in dataclasses.fields(klass)}:
                parts = above + ([trailing[number]] if number in trailing and not stripped.startswith("#") else [])
                if parts:
                    comments[match.group(1)] = " ".join(parts)
            above = []
    return comments


def default_of(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return "(required)"


def type_name(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "")  # a pipe inside a code span does not split a table cell


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def section_rows(cls: type, prefix: str, out: list[str], sections: list[tuple[str, type]]) -> None:
    comments = field_comments(cls)
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for field in dataclasses.fields(cls):
        value = default_of(field)
        if dataclasses.is_dataclass(value):
            sections.append((f"{prefix}{field.name}", type(value)))
            continue
        out.append(
            f"| `{prefix}{field.name}` | `{type_name(hints[field.name])}` | `{repr(value)}` "
            f"| {cell(comments.get(field.name, ''))} |"
        )


def flat(tree: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Dotted keys of a nested mapping: ``{"data": {"source": x}}`` -> ``[("data.source", x)]``."""
    items = []
    for key, value in tree.items():
        if isinstance(value, dict):
            items += flat(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def presets() -> list[str]:
    """One section per preset in configs/: its first comment lines and the keys it sets."""
    lines = [
        "## Presets",
        "",
        "`--config NAME` loads `configs/NAME.yaml`; these are the keys each one sets "
        "(everything else keeps the defaults above).",
        "",
    ]
    for name in preset_names():
        text = Path(resolve_preset(name)).read_text()
        about = []
        for line in text.splitlines():
            if not line.startswith("#"):
                break
            about.append(line.lstrip("# ").strip())
        lines += [f"### `{name}`", ""]
        if about:
            lines += [" ".join(about), ""]
        lines += [
            "| key | value |",
            "|---|---|",
            *[f"| `{key}` | `{value!r}` |" for key, value in flat(yaml.safe_load(text) or {})],
            "",
        ]
    return lines


def render() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the config dataclasses (`adapler/config.py`, `pipelines/config.py`) when the",
        "site is built: every key, its type, its default and the comment the code gives it.",
        "Set any key in a YAML preset or on the command line with `--set section.key=value`",
        "(`adapler run --config bbc_news --set stage2.epochs=3`). Presets are in `configs/`; keys a",
        "preset leaves out keep the defaults below.",
        "",
    ]
    queue: list[tuple[str, type]] = [("", PipelineConfig)]
    while queue:
        name, cls = queue.pop(0)
        rows: list[str] = []
        found: list[tuple[str, type]] = []
        section_rows(cls, f"{name}." if name else "", rows, found)
        title = f"`{name}`" if name else "Top level"
        doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        lines += [f"## {title}", "", f"*{cls.__module__}.{cls.__name__}*", ""]
        if doc:
            lines += [doc, ""]
        if rows:
            lines += ["| key | type | default | what it is |", "|---|---|---|---|", *rows, ""]
        queue.extend(found)
    lines += presets()
    lines += [
        "",
        f"The method alone (`adapler train`, no Ray) reads the sections of "
        f"`{ExperimentConfig.__name__}`; the pipeline adds `ray`, `tune`, `mlflow` and `operating_points`.",
    ]
    return "\n".join(lines) + "\n"


with mkdocs_gen_files.open("reference/configuration.md", "w") as page:
    page.write(render())
