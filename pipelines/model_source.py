"""What ``--model`` (CLI) and ``model`` (Serve) name, as a checked local model directory.

A model directory, a run directory (its chosen model under ``model/``) or a registered model,
``models:/<name>@<alias>``. MLflow (seconds to import) is imported only for the last, and only
once the URI is known to be well formed.
"""

from __future__ import annotations

import os
from pathlib import Path

from adapler.artifacts import find_model_dir, is_model_uri, parse_model_uri


def resolve_model(model: str, tracking_uri: str = "") -> Path:
    """The checked local AdapLeR directory of ``model``; for a registered model a download (treat
    it as read-only: on a local store it may be the store's own folder). ArtifactError or
    RegistryError (both ValueError, one line) when there is none."""
    if not is_model_uri(model):
        return find_model_dir(model)
    name, alias = parse_model_uri(model)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file is noise
    from adapler_pipelines.registry import download_model_dir

    return Path(download_model_dir(name, alias, uri=tracking_uri))
