"""Two rules about strings, shared by the data loader, the config, the service and the CLI: which
str is a text the model can take (valid Unicode), and how a message is put on one line."""

from __future__ import annotations

import re

# JSON's "\ud800" escape gives a str that no UTF-8 encoder (tokenizer, Arrow, config.json, an HTTP
# answer) takes; valid pairs ("\ud83d\ude00") are joined by json.loads, so any surrogate left is a
# lone one.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode ("lone surrogate U+D800 at character 3"), or None."""
    lone = _SURROGATE.search(text)
    return f"lone surrogate U+{ord(lone.group()):04X} at character {lone.start()}" if lone else None


def one_line(text: str) -> str:
    """``text`` on one line: every run of whitespace, line breaks included, becomes one space."""
    return " ".join(text.split())
