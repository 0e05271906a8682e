"""What a saved model is, and what it is called: the rules every entry point shares.

- A model directory is Hugging Face style: ``config.json`` (AdapLeR settings under ``adapler``),
  ``model.safetensors`` (the backbone), ``adapler.safetensors`` (CPs and etas) and the
  tokenizer. No pickle-format file is ever loaded, registered or served (:func:`check_model_dir`).
- A run directory (``runs/<name>/`` of ``adapler run`` / ``train``) holds its chosen model under
  ``model/``; :func:`find_model_dir` takes either.
- A registered model is ``adapler-<run name>`` (:func:`registered_model_name`), addressed as
  ``models:/<name>@<alias>`` (:func:`parse_model_uri`).

Plain Python (no torch, no MLflow): the CLI, the Serve app and the registry import it cheaply.
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.json"
BACKBONE_WEIGHTS = "model.safetensors"  # a plain Hugging Face checkpoint of the backbone
ADAPLER_WEIGHTS = "adapler.safetensors"  # CPs + etas
REQUIRED_FILES = (CONFIG_FILE, BACKBONE_WEIGHTS, ADAPLER_WEIGHTS)
# Files that hold (or may hold) pickles; an AdapLeR directory needs none of them.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib")
RUN_MODEL_SUBDIR = "model"  # runs/<name>/model: the model a run chose
MODEL_URI_PREFIX = "models:/"
CHAMPION, CHALLENGER = "champion", "challenger"  # registry aliases (MLflow's champion/challenger pattern)


class ArtifactError(ValueError):
    """A path that is not a usable AdapLeR model (one line for the user)."""


def check_model_dir(directory: str | Path) -> Path:
    """``directory`` if it is an AdapLeR model directory with safetensors weights and no
    pickle-format file, else ArtifactError naming what is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"model directory not found: {directory}")
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if missing:
        raise ArtifactError(f"{directory} is not an AdapLeR model directory (missing {', '.join(missing)})")
    pickles = sorted(p.name for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ArtifactError(
            f"{directory} holds pickle-format files {pickles}; only safetensors models are loaded "
            "(save with AdapLeRForSequenceClassification.save_pretrained)"
        )
    return directory


def find_model_dir(path: str | Path) -> Path:
    """The checked model directory at ``path``: a model directory itself, or a run directory
    holding its chosen model under ``model/``."""
    path = Path(path)
    # Not config.json: a run directory has one too (the run's resolved config); never the CP weights.
    if path.is_dir() and not (path / ADAPLER_WEIGHTS).is_file() and (path / RUN_MODEL_SUBDIR).is_dir():
        return check_model_dir(path / RUN_MODEL_SUBDIR)
    return check_model_dir(path)


def is_model_uri(model: str) -> bool:
    return str(model).startswith(MODEL_URI_PREFIX)


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``models:/<name>@<alias>`` -> (name, alias); ArtifactError for anything else."""
    rest = uri.removeprefix(MODEL_URI_PREFIX)
    name, sep, alias = rest.partition("@")
    if not is_model_uri(uri) or not sep or not name or not alias or "/" in name:
        raise ArtifactError(f"model URI {uri!r} is not models:/<name>@<alias>")
    return name, alias


def model_uri(name: str, alias: str = CHAMPION) -> str:
    return f"{MODEL_URI_PREFIX}{name}@{alias}"


def registered_model_name(run_name: str) -> str:
    """The registry name of a run's models: ``adapler-<run name>``, in MLflow's charset.

    From the run's name, not its data source: two runs on different files (both
    ``data.source=files``) must not overwrite each other's champion."""
    slug = re.sub(r"[^\w.-]+", "-", run_name).strip("-.")
    if not slug:
        raise ValueError(f"run name {run_name!r} gives no registered-model name; set name=... in the config")
    return f"adapler-{slug}"
