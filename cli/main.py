"""`adapler` command line. Each command is a small function over the library; errors that are the
user's to fix (bad paths, bad data, bad config) print one clear line and exit 2, never a trace."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


class UserError(Exception):
    """An error message for the user, printed without a stack trace."""


def _load_model(path: str, device: str, quantize: str = "none"):
    from adapler.modeling import AdapLeRForSequenceClassification
    from adapler.quantization import maybe_quantize

    if not Path(path).is_dir():
        raise UserError(f"model directory not found: {path}")
    if quantize != "none" and device != "cpu":
        raise UserError(f"--quantize {quantize} runs on CPU only (got --device {device})")
    try:
        model = AdapLeRForSequenceClassification.from_pretrained(path).to(device)
    except FileNotFoundError as err:
        raise UserError(str(err)) from None
    return maybe_quantize(model, quantize)


def cmd_predict(args: argparse.Namespace) -> None:
    from adapler.inference import Predictor

    texts = list(args.texts)
    if args.file:
        texts += [line.rstrip("\n") for line in Path(args.file).read_text().splitlines() if line.strip()]
    if not texts or any(not t.strip() for t in texts):
        raise UserError("give at least one non-empty text (arguments or --file)")
    predictor = Predictor(_load_model(args.model, args.device, args.quantize), batch_size=args.batch_size, removal=args.removal)
    predictions = predictor.predict(texts, [args.pair] * len(texts) if args.pair else None, explain=True)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return
    for text, p in zip(texts, predictions):
        probs = ", ".join(f"{name}={value:.3f}" for name, value in p.probabilities.items())
        print(f"{p.label}  ({probs})  FLOPs speedup {p.flops_speedup:.2f}x")
        print(f"  text: {text[:100]}{'...' if len(text) > 100 else ''}")
        print(f"  kept tokens per layer: {p.kept_lengths} of {p.input_tokens}")
        print(f"  kept at the last layer: {' '.join(p.kept_tokens[-1])}")


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


def cmd_evaluate(args: argparse.Namespace) -> None:
    from adapler.evaluate import evaluate

    model = _load_model(args.model, args.device, args.quantize)
    loader, _ = split_loader(args.data, args.set, model, args.split, args.batch_size, args.max_length)
    result = evaluate(model, loader, removal=args.removal, progress=True, desc=f"{args.data}/{args.split}")
    summary = {**result.summary(), "retention": result.retention, "num_examples": result.num_examples}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    quantized = f", {args.quantize}" if args.quantize != "none" else ""
    print(f"{args.data} {args.split} ({result.num_examples} examples, removal={args.removal}{quantized})")
    print(f"  accuracy       {result.accuracy:.4f}")
    print(f"  macro F1       {result.macro_f1:.4f}")
    print(f"  FLOPs speedup  {result.flops_speedup:.2f}x")
    print(f"  throughput     {result.examples_per_s:.1f} examples/s")
    print("  retention      " + " ".join(f"L{i + 1}:{r:.2f}" for i, r in enumerate(result.retention)))


def cmd_train(args: argparse.Namespace) -> None:
    from adapler.recipe import run_recipe

    result = run_recipe(_pipeline_config(args))  # the ray/tune/mlflow sections are unused here
    print(json.dumps(result.to_dict(), indent=2))


def _pipeline_config(args: argparse.Namespace):
    from adapler.config import load_config
    from adapler_pipelines.config import PipelineConfig

    return load_config(resolve_preset(args.config), args.set, cls=PipelineConfig)


def resolve_preset(name: str | None) -> str | None:
    """A YAML path, or the name of a preset shipped in configs/ (e.g. "demo", "bbc_news")."""
    if name is None or Path(name).is_file():
        return name
    from importlib.resources import files

    shipped = files("adapler_configs") / f"{name.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return str(shipped)
    raise UserError(f"config not found: {name} (a YAML file, or a preset: {', '.join(preset_names())})")


def preset_names() -> list[str]:
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files("adapler_configs").iterdir() if p.name.endswith(".yaml"))


def _print_summary(summary) -> None:
    print()
    print(f"data set {summary.dataset}, backbone {summary.backbone}, {summary.wall_seconds / 60:.1f} min")
    print(summary.table())
    print(f"registered: models:/{summary.registered_model}@champion (version {summary.version})")


def cmd_run(args: argparse.Namespace) -> None:
    from adapler_pipelines.run import run_pipeline

    _print_summary(run_pipeline(_pipeline_config(args)))


def cmd_demo(args: argparse.Namespace) -> None:
    from adapler_pipelines.run import run_pipeline

    args.config = "demo"
    config = _pipeline_config(args)
    print(f"adapler demo: the whole pipeline on a slice of the packaged Rotten Tomatoes "
          f"({config.data.limit} examples per split), {config.stage1.epochs} stage-1 epoch(s), "
          f"{config.tune.num_samples} Tune trial(s) of {config.stage2.epochs} epoch(s); "
          f"for the full data use `adapler run --config rotten_tomatoes`.")
    _print_summary(run_pipeline(config))


def cmd_tune(args: argparse.Namespace) -> None:
    from adapler_pipelines.run import run_pipeline

    config = _pipeline_config(args)
    _print_summary(run_pipeline(config, stage1_only_from=Path(config.output_dir) / config.name))


def build_parser() -> argparse.ArgumentParser:
    from adapler.quantization import QUANTIZE_CHOICES

    parser = argparse.ArgumentParser(
        prog="adapler",
        description="AdapLeR: BERT-family classifiers that drop unimportant tokens layer by layer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify texts with a saved AdapLeR model; show the kept tokens")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--model", required=True, help="AdapLeR model directory (save_pretrained output)")
    p.add_argument("--file", help="also classify each non-empty line of this file")
    p.add_argument("--pair", help="second text, for sentence-pair models")
    p.add_argument("--removal", default="packed", choices=["packed", "masked", "none"],
                   help="packed: real token removal (default); masked: same result, no saving; none: plain backbone")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                   help="int8: dynamic int8 quantization of the linear layers (CPU; composes with packed removal)")
    p.add_argument("--json", action="store_true", help="print JSON (with the kept tokens of every layer)")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy, F1, FLOPs speedup and per-layer retention on a data set")
    e.add_argument("--model", required=True, help="AdapLeR model directory")
    e.add_argument("--data", default="rotten_tomatoes",
                   help="rotten_tomatoes | bbc_news (packaged), files (with --set train_file=...), or a hub name")
    e.add_argument("--split", default="test", choices=["train", "dev", "test"])
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="data option, e.g. --set limit=200 or --set test_file=my.csv (repeatable)")
    e.add_argument("--removal", default="packed", choices=["packed", "masked", "none"])
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-length", type=int, help="default: the length the model was trained with")
    e.add_argument("--device", default="cpu")
    e.add_argument("--quantize", default="none", choices=QUANTIZE_CHOICES,
                   help="int8: dynamic int8 quantization of the linear layers (CPU; composes with packed removal)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)

    for name, func, text in (
        ("run", cmd_run, "the pipeline on Ray: stage 1 -> saliency -> stage-2 search -> MLflow registry"),
        ("tune", cmd_tune, "only the stage-2 search + registration, on the stage-1 results of an earlier run"),
    ):
        r = sub.add_parser(name, help=text)
        r.add_argument("--config", default="rotten_tomatoes",
                       help="YAML file or preset name (demo, rotten_tomatoes, bbc_news, sst2, files)")
        r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override, e.g. --set tune.num_samples=4 --set ray.num_workers=2 (repeatable)")
        r.set_defaults(func=func)
    d = sub.add_parser("demo", help="the whole pipeline on a slice of the packaged data, offline, minutes on 2 cores")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="stage 1 -> saliency -> stage 2 on this machine, without Ray")
    t.add_argument("--config", help="YAML file or preset name (configs/*.yaml)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set stage2.phi=0.001 (repeatable)")
    t.set_defaults(func=cmd_train)

    from adapler_deploy.cli import add_serve_command
    from adapler_cli.calibrate import add_calibrate_command
    from adapler_cli.report import add_report_command
    from adapler_cli.rationales import add_rationales_command

    add_serve_command(sub)
    add_calibrate_command(sub)
    add_report_command(sub)
    add_rationales_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load are noise here
    hf_logging.set_verbosity_error()
    from adapler.batching import SaliencyMismatch
    from adapler.config import ConfigError
    from adapler.data import DataError
    from adapler.modeling import UnsupportedBackbone

    try:
        args.func(args)
    except (UserError, ConfigError, DataError, UnsupportedBackbone, SaliencyMismatch) as err:
        print(f"adapler: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adapler: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
