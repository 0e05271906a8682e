"""What several commands share: finding and loading the model given to ``--model``, and a loader
over one split of a data set. Command modules import these from here, never from
``adapler_cli.main`` (which imports the commands).

``--model`` takes a model directory, a run directory (``runs/<name>``, whose chosen model is under
``model/``) or a registered model, ``models:/<name>@<alias>``; all three go through
:func:`adapler_pipelines.model_source.resolve_model`. MLflow is imported only for a ``models:/`` URI.
"""

from __future__ import annotations

from adapler_cli.errors import UserError
from adapler_pipelines.model_source import resolve_model

MODEL_HELP = "AdapLeR model directory, run directory (runs/<name>) or registered model models:/<name>@<alias>"
TRACKING_URI_HELP = "MLflow tracking URI for models:/ (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)"


def add_model_arguments(parser, required: bool = True) -> None:
    """``--model`` and ``--tracking-uri``, with the same meaning in every command."""
    parser.add_argument("--model", required=required, help=MODEL_HELP)
    parser.add_argument("--tracking-uri", default="", help=TRACKING_URI_HELP)


def add_inference_arguments(parser) -> None:
    """``--device``, ``--runtime`` and ``--quantize``: where and how the model runs, alike in every command."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="onnx: ONNX Runtime (exported on first use into a cache keyed by the weights, "
        "$ADAPLER_ONNX_CACHE or ~/.cache/adapler/onnx); torch: PyTorch eager; auto (default): "
        "onnx on CPU (the faster, bench/runtime.py), torch on GPU or with --removal masked",
    )
    parser.add_argument(
        "--quantize",
        default="none",
        choices=["none", "int8"],
        help="int8: int8 weights for the linear layers, CPs kept float (CPU; composes with removal)",
    )


def model_and_runtime(model: str, runtime: str, device: str, removal: str, tracking_uri: str = "") -> tuple[str, str]:
    """The directory of ``--model`` and ``--runtime`` resolved for it: "auto" runs a family that
    the exported graphs can not express on torch, and says why once (adapler.inference)."""
    from adapler.inference import resolve_runtime

    directory = resolve_model(model, tracking_uri)  # ArtifactError / RegistryError: one line
    return str(directory), resolve_runtime(runtime, device, removal, directory)


def load_model(model: str, device: str = "cpu", quantize: str = "none", tracking_uri: str = "", runtime: str = "torch"):
    """The AdapLeR model of ``--model`` on ``device`` and ``runtime`` (resolved: not "auto"),
    optionally quantized."""
    from adapler.inference import load_for_inference

    if quantize != "none" and device != "cpu" and runtime == "torch":
        raise UserError(f"--quantize {quantize} runs on CPU only with --runtime torch (got --device {device})")
    directory = resolve_model(model, tracking_uri)  # ArtifactError / RegistryError: one line
    try:
        return load_for_inference(directory, runtime, device, quantize)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None


def split_loader(data_name: str, overrides: list[str], model, split: str, batch_size: int, max_length: int | None):
    """A loader over one split of a data set, after checking that its labels are the model's.
    Returns (loader, the split's rows)."""
    from adapler.batching import make_loader
    from adapler.config import DataConfig, ExperimentConfig, load_config
    from adapler.data import load_data

    data = load_data(ExperimentConfig(data=load_config(None, [f"source={data_name}", *overrides], cls=DataConfig)))
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if data.label_names != labels:
        raise UserError(f"the model's labels {labels} differ from the data's {data.label_names}")
    rows = data.split(split)
    if rows.empty:
        raise UserError(f"the {split} split of {data.name} is empty")
    loader = make_loader(rows, model.tokenizer, batch_size, max_length or model.tokenizer.model_max_length)
    return loader, rows
