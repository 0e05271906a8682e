"""Generate the CLI reference (reference/cli.md) at build time from the argparse parser
(``adapler_cli.main.build_parser``): every subcommand, its help line and its full ``--help``.
Run by mkdocs-gen-files; the page cannot drift from the parser."""

from __future__ import annotations

import argparse
import os

import mkdocs_gen_files

from adapler_cli.main import build_parser


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help line, parser) of every subcommand, in the order ``--help`` lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def render() -> str:
    os.environ["COLUMNS"] = "100"  # a stable wrap width for argparse
    parser = build_parser()
    commands = subcommands(parser)
    lines = [
        "# CLI reference",
        "",
        "Generated from the `adapler` command's argparse parser when the site is built.",
        "",
        "| command | what it does |",
        "|---|---|",
        *[f"| [`adapler {name}`](#adapler-{name}) | {text} |" for name, text, _ in commands],
        "",
        "```text",
        parser.format_help().rstrip(),
        "```",
        "",
    ]
    for name, text, sub in commands:
        lines += [
            f"## adapler {name}",
            "",
            text[:1].upper() + text[1:] + ".",
            "",
            "```text",
            sub.format_help().rstrip(),
            "```",
            "",
        ]
    return "\n".join(lines)


with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(render())
