"""What several commands share: finding and loading the model given to ``--model``, and a loader
over one split of a data set. Command modules import these from here, never from
``adapler_cli.main`` (which imports the commands).

``--model`` takes a model directory, a run directory (``runs/<name>``, whose chosen model is under
``model/``) or a registered model, ``models:/<name>@<alias>``; all three go through
:func:`resolve_model_dir`. MLflow is imported only for a ``models:/`` URI.
"""

from __future__ import annotations

import os
from pathlib import Path

from adapler.artifacts import find_model_dir, is_model_uri, parse_model_uri
from adapler_cli.errors import UserError

MODEL_HELP = "AdapLeR model directory, run directory (runs/<name>) or registered model models:/<name>@<alias>"
TRACKING_URI_HELP = "MLflow tracking URI for models:/ (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"


def add_model_arguments(parser, required: bool = True) -> None:
    """``--model`` and ``--tracking-uri``, with the same meaning in every command."""
    parser.add_argument("--model", required=required, help=MODEL_HELP)
    parser.add_argument("--tracking-uri", default="", help=TRACKING_URI_HELP)


def resolve_model_dir(model: str, tracking_uri: str = "") -> Path:
    """The checked local model directory of ``model`` (a directory, a run directory or a
    ``models:/<name>@<alias>`` URI, downloaded; treat that directory as read-only)."""
    if not is_model_uri(model):
        return find_model_dir(model)  # ArtifactError: one line
    try:
        parse_model_uri(model)  # a malformed URI fails here, before MLflow is imported
    except ValueError as err:
        raise UserError(str(err)) from None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file is noise
    from adapler_pipelines.registry import resolve_model  # MLflow: seconds to import

    return resolve_model(model, tracking_uri)  # RegistryError / ArtifactError: one line


def load_model(model: str, device: str = "cpu", quantize: str = "none", tracking_uri: str = ""):
    """The AdapLeR model of ``--model`` on ``device``, optionally quantized."""
    from adapler.modeling import AdapLeRForSequenceClassification
    from adapler.quantization import maybe_quantize

    if quantize != "none" and device != "cpu":
        raise UserError(f"--quantize {quantize} runs on CPU only (got --device {device})")
    directory = resolve_model_dir(model, tracking_uri)
    try:
        loaded = AdapLeRForSequenceClassification.from_pretrained(directory).to(device)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    return maybe_quantize(loaded, quantize)


def split_loader(data_name: str, overrides: list[str], model, split: str, batch_size: int, max_length: int | None):
    """A loader over one split of a data set, after checking that its labels are the model's.
    Returns (loader, number of examples)."""
    from adapler.batching import make_loader
    from adapler.config import DataConfig, ExperimentConfig, load_config
    from adapler.recipe import load_data

    data = load_data(ExperimentConfig(data=load_config(None, [f"source={data_name}", *overrides], cls=DataConfig)))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if data.label_names != labels:
        raise UserError(f"the model's labels {labels} differ from the data's {data.label_names}")
    rows = data.split(split)
    if rows.empty:
        raise UserError(f"the {split} split of {data.name} is empty")
    loader = make_loader(rows, model.tokenizer, batch_size, max_length or model.tokenizer.model_max_length)
    return loader, len(rows)
