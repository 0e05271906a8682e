"""`adapler` command line. Each command is a small function over the library; errors that are the
user's to fix (bad paths, bad data, bad config) print one clear line and exit 2, never a trace."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from adapler.config import preset_names, resolve_preset
from adapler.run_result import RunResult
from adapler_cli.errors import UserError, expected_errors, one_line


def cmd_predict(args: argparse.Namespace) -> None:
    from adapler.inference import Predictor
    from adapler_cli.models import load_model, model_and_runtime

    texts = list(args.texts)
    if args.file:
        try:
            lines = Path(args.file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise UserError(f"--file {args.file}: {getattr(err, 'strerror', None) or err}") from None
        texts += [line.rstrip("\n") for line in lines if line.strip()]
    if not texts or any(not t.strip() for t in texts):
        raise UserError("give at least one non-empty text (arguments or --file)")
    directory, runtime = model_and_runtime(args.model, args.runtime, args.device, args.removal, args.tracking_uri)
    model = load_model(directory, args.device, args.quantize, args.tracking_uri, runtime)
    predictor = Predictor(model, batch_size=args.batch_size, removal=args.removal)
    predictions = predictor.predict(
        texts,
        [args.pair] * len(texts) if args.pair else None,
        explain=True,
        operating_point=args.operating_point,
        target_speedup=args.target_speedup,
        factor=args.factor,
    )
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
        return
    for text, p in zip(texts, predictions):
        probs = ", ".join(f"{name}={value:.3f}" for name, value in p.probabilities.items())
        print(f"{p.label}  ({probs})  FLOPs speedup {p.flops_speedup:.2f}x")
        print(f"  text: {text[:100]}{'...' if len(text) > 100 else ''}")
        print(f"  kept tokens per layer: {p.kept_lengths} of {p.input_tokens}")
        print(f"  kept at the last layer: {' '.join(p.kept_tokens[-1])}")
        if p.operating_point is not None:
            print(f"  operating point: {p.operating_point.describe()}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from adapler.evaluate import budget_gain, evaluate
    from adapler_cli.models import load_model, model_and_runtime, split_loader

    directory, runtime = model_and_runtime(args.model, args.runtime, args.device, args.removal, args.tracking_uri)
    model = load_model(directory, args.device, args.quantize, args.tracking_uri, runtime)
    loader, rows = split_loader(args.data, args.set, model, args.split, args.batch_size, args.max_length)
    result = evaluate(model, loader, removal=args.removal, progress=True, desc=f"{args.data}/{args.split}")
    # A model chosen at a shorter input budget: its speedup against the backbone at the length it was
    # chosen against (settings.reference_max_length), as its run's summary and operating points say.
    reference = model.settings.reference_max_length
    gain = budget_gain(model, rows)  # with removal "none": what the cut to its budget alone saves
    summary = {
        **result.summary(),
        "flops_speedup": result.flops_speedup * gain,
        "flops_speedup_at_budget": result.flops_speedup,
        "input_budget": model.tokenizer.model_max_length,
        "retention": result.retention,
        "num_examples": result.num_examples,
    }
    if args.against:
        labels = rows["label"].to_numpy()
        summary["paired"] = paired = paired_against(args, result.predictions, labels)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    quantized = f", {args.quantize}" if args.quantize != "none" else ""
    print(
        f"{args.data} {args.split} ({result.num_examples} examples, removal={args.removal}, "
        f"runtime={runtime}{quantized})"
    )
    print(f"  accuracy       {result.accuracy:.4f}")
    print(f"  macro F1       {result.macro_f1:.4f}")
    against = (
        f" (against the backbone at {reference} tokens; {result.flops_speedup:.2f}x at the model's own "
        f"{model.tokenizer.model_max_length})"
        if gain != 1.0
        else ""
    )
    print(f"  FLOPs speedup  {summary['flops_speedup']:.2f}x{against}")
    print(f"  throughput     {result.examples_per_s:.1f} examples/s")
    print("  retention      " + " ".join(f"L{i + 1}:{r:.2f}" for i, r in enumerate(result.retention)))
    if args.against:
        print_paired(paired, args.against)


def paired_against(args: argparse.Namespace, predictions, labels) -> dict[str, float]:
    """`evaluate --against`: the same split through the reference model (removal off), compared
    per example with the evaluated model's predictions (adapler.paired)."""
    from adapler.evaluate import evaluate
    from adapler.paired import compare, paired_summary
    from adapler_cli.models import load_model, split_loader

    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence}")
    reference = load_model(args.against, args.device, "none", args.tracking_uri, "torch")
    loader, _ = split_loader(args.data, args.set, reference, args.split, args.batch_size, args.max_length)
    against = evaluate(reference, loader, removal="none", progress=True, desc=f"{args.data}/{args.split} (reference)")
    return paired_summary(compare(against.predictions, predictions, labels), args.confidence)


def print_paired(paired: dict[str, float], against: str) -> None:
    print(f"  against {against} (removal off), paired on the same {paired['examples']} examples:")
    print(
        f"    changed predictions  {paired['changed']} ({paired['changed'] / max(paired['examples'], 1):.1%}): "
        f"{paired['newly_wrong']} newly wrong, {paired['newly_right']} newly right"
    )
    print(
        f"    accuracy drop        {paired['drop'] * 100:.2f} points, {paired['confidence']:.0%} upper bound "
        f"{paired['drop_bound'] * 100:.2f} (smallest this split can certify: "
        f"{paired['smallest_certifiable_drop'] * 100:.2f})"
    )
    print(f"    error ratio          {paired['error_ratio']:.2f} (errors of the model / errors of the reference)")


def cmd_train(args: argparse.Namespace) -> None:
    from adapler.recipe import run_recipe

    result = run_recipe(_pipeline_config(args))  # the ray/tune/mlflow sections are unused here
    print(json.dumps(result.to_dict(), indent=2))
    if result.warning:
        print(f"warning: {result.warning}", file=sys.stderr)


def _pipeline_config(args: argparse.Namespace):
    from adapler.config import load_config
    from adapler_pipelines.config import PipelineConfig

    return load_config(resolve_preset(args.config), args.set, cls=PipelineConfig)


# What `predict` shows after a run, per packaged data set (any text works).
SAMPLE_TEXTS = {
    "rotten_tomatoes": "A gripping, beautifully shot film.",
    "bbc_news": "The central bank raised interest rates for the third time this year.",
}


def _shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies below it, as a user would type it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def data_arguments(data) -> list[str]:
    """``--data SOURCE`` plus ``--set key=value`` for every data option the run set away from its
    default (limit, files, columns, hub config, split seed), so that evaluate / calibrate read the
    run's own splits. max_length is left out: a saved model knows the length it was trained with."""
    from dataclasses import fields

    from adapler.config import DataConfig

    default = DataConfig()
    out = ["--data", data.source]
    for f in fields(DataConfig):
        value = getattr(data, f.name)
        if f.name not in ("source", "max_length") and value is not None and value != getattr(default, f.name):
            out += ["--set", f"{f.name}={value}"]
    return out


def _program() -> str:
    """How to call adapler again from here: ``adapler`` if that is on the PATH, else the path this
    process was started by (``.venv/bin/adapler`` when the environment is not activated)."""
    import shutil

    invoked = Path(sys.argv[0])
    on_path = shutil.which("adapler")
    if invoked.name != "adapler" or not invoked.is_file() or (on_path and Path(on_path).resolve() == invoked.resolve()):
        return "adapler"
    return _shown_path(invoked)


def next_commands(summary: RunResult, config, program: str = "adapler") -> list[str]:
    """Shell commands that work on what a pipeline run made (its summary.json record): its
    registered version (by the alias that version got) and its model directory, with the run's
    data options and tracking URI."""
    import shlex

    from adapler.artifacts import model_uri
    from adapler.run_layout import RunLayout

    registered = model_uri(summary.registered_model, summary.alias)
    tracking = ["--tracking-uri", config.mlflow.tracking_uri] if config.mlflow.tracking_uri else []
    data = data_arguments(config.data)
    pair = ["--pair", "A second text."] if config.data.text_pair_column else []
    text = SAMPLE_TEXTS.get(config.data.source, "Some text to classify.")
    commands = [
        ["predict", "--model", registered, *tracking, *pair, text],
        ["evaluate", "--model", registered, *tracking, *data, "--split", "test"],
        [
            "calibrate",
            "--model",
            _shown_path(summary.model_dir),
            *data,
            "--max-drop",
            "0.01",
            "--output",
            _shown_path(RunLayout(Path(summary.run_dir)).calibrated_model),
        ],
        ["serve", "--model", registered, *tracking],
    ]
    return [shlex.join([program, *command]) for command in commands]


def _print_summary(summary: RunResult, config) -> None:
    from adapler.artifacts import model_uri

    print()
    print(f"data set {summary.dataset}, backbone {summary.backbone}, {summary.wall_seconds / 60:.1f} min")
    print(summary.table())
    print(f"registered: {model_uri(summary.registered_model, summary.alias)} (version {summary.version})")
    print(summary.promotion)
    if summary.warning:
        print(f"warning: {summary.warning}")
    if summary.operating_points:
        from adapler.operating_points import OperatingPoints

        print(f"operating points (dev): {OperatingPoints.from_dict(summary.operating_points).describe()}")
    print(f"model directory: {_shown_path(summary.model_dir)}")
    print("next:")
    for command in next_commands(summary, config, _program()):
        print(f"  {command}")


def cmd_run(args: argparse.Namespace) -> None:
    from adapler_pipelines.run import run_pipeline

    config = _pipeline_config(args)
    _print_summary(run_pipeline(config), config)


def cmd_demo(args: argparse.Namespace) -> None:
    from adapler_pipelines.run import run_pipeline

    args.config = "demo"
    config = _pipeline_config(args)
    full = (
        f"; for the full data use `adapler run --config {config.data.source}`"
        if config.data.source in preset_names()
        else ""
    )
    print(
        f"adapler demo: the whole pipeline on a slice of the {config.data.source} data "
        f"({config.data.limit} examples per split, {config.data.max_length} tokens), {config.stage1.epochs} "
        f"stage-1 epoch(s), {config.tune.num_samples} Tune trial(s) of {config.stage2.epochs} epoch(s){full}."
    )
    _print_summary(run_pipeline(config), config)


def cmd_tune(args: argparse.Namespace) -> None:
    from adapler_pipelines.run import run_pipeline

    config = _pipeline_config(args)
    _print_summary(run_pipeline(config, stage1_only_from=config.run_dir), config)


def add_config_arguments(
    parser: argparse.ArgumentParser, example: str, default: str | None = None, with_config: bool = True
) -> None:
    """--config and --set, as every config-driven command takes them (``default``: the preset
    when --config is absent; ``with_config`` False: the command has its own preset)."""
    if with_config:
        presets = ", ".join(preset_names())
        parser.add_argument(
            "--config",
            default=default,
            help=f"YAML file or preset name ({presets})" + (f"; default {default}" if default else ""),
        )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config key (every key: the configuration reference in docs/), e.g. {example}; repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    from adapler_cli.models import add_inference_arguments, add_model_arguments

    parser = argparse.ArgumentParser(
        prog="adapler",
        description="AdapLeR: BERT-family classifiers that drop unimportant tokens layer by layer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify texts with a saved AdapLeR model; show the kept tokens")
    p.add_argument("texts", nargs="*", help="texts to classify")
    add_model_arguments(p)
    p.add_argument("--file", help="also classify each non-empty line of this file")
    p.add_argument("--pair", help="second text, for sentence-pair models")
    p.add_argument(
        "--removal",
        default="packed",
        choices=["packed", "masked", "none"],
        help="packed: real token removal (default); masked: same result, no saving; none: plain backbone",
    )
    p.add_argument("--batch-size", type=int, default=32)
    add_inference_arguments(p)
    point = p.add_mutually_exclusive_group()
    point.add_argument(
        "--operating-point",
        metavar="NAME",
        help="run at a stored operating point: accurate, balanced or fast (`adapler calibrate "
        "--points` stores them; `adapler run` does for the models it registers); "
        "default: the model as saved",
    )
    point.add_argument(
        "--target-speedup",
        type=float,
        metavar="X",
        help="run at the stored curve's point with the smallest dev FLOPs speedup >= X",
    )
    point.add_argument(
        "--factor", type=float, metavar="F", help="multiply every eta by F for these texts (> 1 drops more tokens)"
    )
    p.add_argument("--json", action="store_true", help="print JSON (with the kept tokens of every layer)")
    p.set_defaults(func=cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy, F1, FLOPs speedup and per-layer retention on a data set")
    add_model_arguments(e)
    e.add_argument(
        "--data",
        default="rotten_tomatoes",
        help="rotten_tomatoes | bbc_news (packaged), files (with --set train_file=...), or a hub name",
    )
    e.add_argument("--split", default="test", choices=["train", "dev", "test"])
    e.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="data option, e.g. --set limit=200 or --set test_file=my.csv (repeatable)",
    )
    e.add_argument("--removal", default="packed", choices=["packed", "masked", "none"])
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-length", type=int, help="default: the length the model was trained with")
    add_inference_arguments(e)
    e.add_argument("--json", action="store_true")
    e.add_argument(
        "--against",
        metavar="MODEL",
        help="a reference (the backbone, stage 1's model, or any model: path or models:/name/version): "
        "compare predictions per example on the same split, with removal off for the reference",
    )
    e.add_argument("--confidence", type=float, default=0.9, help="of the upper bound on the paired drop (default 0.9)")
    e.set_defaults(func=cmd_evaluate)

    for name, func, text, description in (
        (
            "run",
            cmd_run,
            "the pipeline on Ray: stage 1 -> saliency -> stage-2 search -> MLflow registry",
            "Fine-tunes the backbone (stage 1, Ray Train), computes saliency labels (Ray Data), searches "
            "the pruning and the input budget (Ray Tune), chooses the fastest point whose paired accuracy "
            "drop against stage 1 is certified within stage2.selection_tolerance on dev, tests it against "
            "the backbone, registers it in MLflow and writes runs/<name>/ (model/, summary.json, report/). "
            "Joins the cluster of $RAY_ADDRESS or ray.address, else starts a local Ray.",
        ),
        (
            "tune",
            cmd_tune,
            "only the stage-2 search + registration, on the stage-1 results of an earlier run",
            "The stage-2 half of `adapler run`: reuses the stage-1 checkpoints and saliency labels an "
            "earlier `adapler run` with the same --config and name recorded (runs/<name>/stage1.json), "
            "then searches, chooses, registers and writes runs/<name>/ as `adapler run` does.",
        ),
    ):
        r = sub.add_parser(name, help=text, description=description)
        add_config_arguments(r, "--set tune.num_samples=4 --set ray.num_workers=2", default="rotten_tomatoes")
        r.set_defaults(func=func)
    d = sub.add_parser(
        "demo",
        help="the whole pipeline on a slice of the packaged data, offline, minutes on 2 cores",
        description="`adapler run --config demo`: 600 packaged BBC News articles per split, 5 topics, "
        "128 tokens, a local Ray instance and MLflow in ./mlflow.db; registers models:/adapler-demo@champion "
        "and copies it to runs/demo/model, then prints the commands to try next.",
    )
    add_config_arguments(d, "--set model.backbone=DIR --set tune.num_samples=4", with_config=False)
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser(
        "train",
        help="stage 1 -> saliency -> stage 2 on this machine, without Ray",
        description="The method on one machine, no Ray or MLflow: stage 1, saliency labels, one stage-2 run "
        "whose epoch is chosen by the same paired rule, then test. Writes runs/<name>/ (model/, summary.json); "
        "a rerun with the same backbone, data and stage-1 settings reuses stage 1.",
    )
    add_config_arguments(t, "--set stage2.phi=0.5 --set data.max_length=64")
    t.set_defaults(func=cmd_train)

    from adapler_cli.calibrate import add_calibrate_command
    from adapler_cli.export import add_export_command
    from adapler_cli.rationales import add_rationales_command
    from adapler_cli.report import add_report_command
    from adapler_cli.serve import add_serve_command

    add_serve_command(sub)
    add_calibrate_command(sub)
    add_export_command(sub)
    add_report_command(sub)
    add_rationales_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every model load are noise here
    hf_logging.set_verbosity_error()
    try:
        args.func(args)
    except expected_errors() as err:  # evaluated only when something is raised (see adapler_cli.errors)
        print(f"adapler: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("adapler: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
