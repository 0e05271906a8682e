"""Style: ruff's lint rules and its formatter (configured in pyproject.toml, ``[tool.ruff]``) hold on
the whole repository. To fix: ``ruff check --fix`` then ``ruff format``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUFF = Path(sys.executable).with_name("ruff")


def _ruff(*args: str) -> subprocess.CompletedProcess:
    assert RUFF.exists(), f"no ruff beside {sys.executable}: pip install -e '.[dev]'"
    return subprocess.run([str(RUFF), *args, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_is_clean():
    done = _ruff("check", "--output-format=concise")
    assert done.returncode == 0, f"ruff check (ruff check --fix fixes some):\n{done.stdout[-6000:]}{done.stderr}"


def test_ruff_format_leaves_every_file_as_it_is():
    done = _ruff("format", "--check")
    assert done.returncode == 0, f"ruff format would change these files (run ruff format):\n{done.stdout[-6000:]}"
