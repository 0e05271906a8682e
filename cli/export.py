"""``adapler export``: a model's ONNX graphs for ``--runtime onnx`` (adapler.onnx_export), written
beside a copy of the model so that the copy loads without exporting again."""

from __future__ import annotations

import argparse
from pathlib import Path

from adapler.artifacts import is_model_uri
from adapler_cli.errors import UserError
from adapler_cli.models import add_model_arguments
from adapler_pipelines.model_source import resolve_model

DESCRIPTION = """\
Write the model's ONNX graphs (embeddings, one graph per encoder layer with the next layer's
Contribution Predictor, and the plain backbone), optimized by ONNX Runtime's transformer
optimizer, into OUTPUT/onnx/, beside a copy of the model (config, weights, tokenizer). With
--quantize int8 the int8 graphs (int8 weights, CPs kept float) are written too. Loading OUTPUT
with --runtime onnx then uses these graphs. Without export, --runtime onnx exports on first use
into a cache keyed by the weights ($ADAPLER_ONNX_CACHE, else ~/.cache/adapler/onnx).
OUTPUT may be the model directory itself (not a registered model's): its graphs then travel
with it, e.g. into the registry.
"""


def add_export_command(subparsers) -> argparse.ArgumentParser:
    x = subparsers.add_parser(
        "export",
        help="write a model's ONNX Runtime graphs (fp32, and int8 with --quantize int8)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(x)
    x.add_argument("--output", required=True, help="directory for the copy of the model and its onnx/ graphs")
    x.add_argument("--quantize", default="none", choices=["none", "int8"], help="int8: also write the int8 graphs")
    x.set_defaults(func=run_export)
    return x


def run_export(args: argparse.Namespace) -> None:
    from adapler.onnx_export import ONNX_SUBDIR, export_model_dir

    model_dir = resolve_model(args.model, args.tracking_uri)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} exists and is not a directory")
    if is_model_uri(args.model) and output.resolve() == model_dir.resolve():
        raise UserError("--output must be a new directory for a registered model: the store's copy is read-only")
    graphs = export_model_dir(model_dir, output, args.quantize)
    files = sorted(p.name for p in (output / ONNX_SUBDIR).glob("*.onnx"))
    print(f"exported {len(files)} graphs to {output / ONNX_SUBDIR} ({', '.join(files)})")
    quantize = f" --quantize {graphs.quantize}" if graphs.quantize != "none" else ""
    print(f'next: adapler predict --model {output} --runtime onnx{quantize} "some text"')
