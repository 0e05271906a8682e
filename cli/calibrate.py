"""``adapler calibrate``: scale a trained model's thresholds to a speed or accuracy goal, on the
dev split, without retraining.

Wired into the CLI by ``cli/main.py`` (``add_calibrate_command(sub)`` in ``build_parser``). The
search is :mod:`adapler.calibration` (plain torch); registering the result is
:mod:`adapler_pipelines.calibrate` (MLflow, imported only for ``models:/`` sources).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from adapler.artifacts import is_model_uri, parse_model_uri
from adapler.selection import no_pruning_warning
from adapler_cli.errors import UserError
from adapler_cli.models import MODEL_HELP, TRACKING_URI_HELP, load_model, split_loader
from adapler_pipelines.model_source import resolve_model

if TYPE_CHECKING:
    from adapler.operating_points import CurvePoint

DESCRIPTION = """\
Multiply every layer's eta (token i stays at layer l iff its score >= eta_l / n) by one global
factor, chosen on the dev split of --data: a factor > 1 drops more tokens (faster), < 1 fewer.
The search doubles (or halves) the factor from 1 until the goal flips, then bisects to within 5%;
each factor tried is one pass over the dev split with real token removal, and the curve it
explored is printed (factor, dev accuracy, FLOPs speedup, measured examples/s).

Goals:
  --target-speedup X  the smallest factor whose dev FLOPs speedup is >= X. If the model as
                      trained is already faster, the factor goes below 1 (speed given back for
                      accuracy). A target out of reach even when every layer keeps only [CLS]
                      is an error that names the best speedup reached.
  --max-drop D        the highest dev FLOPs speedup among the factors tried whose dev accuracy
                      is >= the as-trained dev accuracy - D (e.g. 0.01 = one point).
                      With --against STAGE1 (the reference: stage 1's model, or the backbone
                      fine-tuned), the paired rule instead: the fastest factor whose upper
                      --confidence bound (default 0.9) of the paired accuracy drop against the
                      reference's dev predictions is within D, and whose observed drop against
                      its own unpruned predictions is too, walking the factors up
                      (adapler.selection, adapler.paired).
  --points            leave the etas as they are and store the model's operating points in its
                      config.json: a curve of factors on dev and three names on it, accurate
                      (the fastest within 0.2 points of the best dev accuracy), balanced (the
                      fastest whose --confidence upper bound of the paired drop against accurate
                      is within 1 point) and fast (within --fast-drop of accurate, default 0.03,
                      bounded alike). Requests then pick one: `adapler predict
                      --operating-point fast`, or "operating_point" in a Serve request.

A model directory is saved calibrated to --output (save_pretrained format). A registered model
(models:/<name>@<alias>) becomes a new version of <name>, with the curve logged to MLflow
(curve.csv, curve.png, metrics) and tags calibration_factor, dev_accuracy, flops_speedup (dev),
or with --points operating_points and point.<name>.factor; no alias moves unless --set-alias
names one.
"""


def add_calibrate_command(subparsers) -> argparse.ArgumentParser:
    c = subparsers.add_parser(
        "calibrate",
        help="scale a trained model's thresholds to a speedup target or accuracy budget (no retraining)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--model", required=True, help=MODEL_HELP)
    c.add_argument(
        "--data",
        default="rotten_tomatoes",
        help="rotten_tomatoes | bbc_news (packaged), files (--set train_file=... [dev_file=...]), "
        "or a hub name; its dev split is used",
    )
    c.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="data option, e.g. --set limit=200 (repeatable)"
    )
    goal = c.add_mutually_exclusive_group(required=True)
    goal.add_argument("--target-speedup", type=float, metavar="X", help="dev FLOPs speedup to reach, e.g. 3")
    goal.add_argument(
        "--max-drop", type=float, metavar="D", help="dev accuracy the model may lose, absolute, e.g. 0.01"
    )
    goal.add_argument(
        "--points",
        action="store_true",
        help="store the operating points accurate / balanced / fast (and the curve) with the model",
    )
    c.add_argument(
        "--fast-drop",
        type=float,
        metavar="D",
        help="--points: dev accuracy the 'fast' point may lose against 'accurate' (default 0.03)",
    )
    c.add_argument(
        "--against",
        metavar="MODEL",
        help="--max-drop: bound the paired drop against this reference's dev predictions (stage 1's model)",
    )
    c.add_argument(
        "--confidence",
        type=float,
        default=0.9,
        help="--against and --points: of the paired drop's upper bound (default 0.9)",
    )
    c.add_argument("--output", help="save the calibrated model here (save_pretrained format)")
    c.add_argument(
        "--set-alias", metavar="NAME", help="models:/ only: point this alias (e.g. champion) at the new version"
    )
    c.add_argument("--tracking-uri", default="", help=TRACKING_URI_HELP)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--max-length", type=int, help="default: the length the model was trained with")
    c.add_argument("--device", default="cpu", help="cpu or cuda")
    c.add_argument(
        "--runtime",
        default="torch",
        choices=["auto", "torch", "onnx"],
        help="where the dev passes run (torch by default; onnx: ONNX Runtime, so the curve's examples/s "
        "are the deployed runtime's); the saved model is the same either way",
    )
    c.set_defaults(func=run_calibrate)
    return c


def _check_args(args: argparse.Namespace, from_registry: bool) -> None:
    if args.target_speedup is not None and not args.target_speedup > 0:
        raise UserError(f"--target-speedup must be > 0, got {args.target_speedup:g}")
    if args.max_drop is not None and not 0 <= args.max_drop <= 1:
        raise UserError(f"--max-drop must be in [0, 1] (absolute accuracy), got {args.max_drop:g}")
    if args.fast_drop is not None and not args.points:
        raise UserError("--fast-drop goes with --points")
    if args.fast_drop is not None and not 0 <= args.fast_drop <= 1:
        raise UserError(f"--fast-drop must be in [0, 1] (absolute accuracy), got {args.fast_drop:g}")
    if args.against and args.max_drop is None:
        raise UserError("--against goes with --max-drop (the drop the paired bound must stay within)")
    if not 0 < args.confidence < 1:
        raise UserError(f"--confidence must be in (0, 1), got {args.confidence:g}")
    if args.set_alias and not from_registry:
        raise UserError("--set-alias needs a registered model (--model models:/<name>@<alias>)")
    if args.output:
        output = Path(args.output)
        if output.exists() and not output.is_dir():
            raise UserError(f"--output {output} exists and is not a directory")


def format_curve(
    points: Sequence[CurvePoint], chosen: CurvePoint | None = None, names: Mapping[str, float] | None = None
) -> str:
    """The explored curve as a table, one row per factor (as given: by factor ascending); the
    chosen factor and the named ones (name -> factor) marked."""
    lines = [f"{'factor':>10}  {'dev accuracy':>12}  {'FLOPs speedup':>13}  {'examples/s':>10}"]
    for p in points:
        note = "  <- chosen" if chosen is not None and p.factor == chosen.factor else ""
        note += "".join(f"  <- {name}" for name, factor in (names or {}).items() if factor == p.factor)
        note += "  (as trained)" if p.factor == 1.0 else ""
        lines.append(
            f"{p.factor:>10.4g}  {p.accuracy:>12.4f}  {p.flops_speedup:>12.2f}x  {p.examples_per_s:>10.1f}{note}"
        )
    return "\n".join(lines)


def run_calibrate(args: argparse.Namespace) -> None:
    from_registry = is_model_uri(args.model)
    _check_args(args, from_registry)
    # The model and everything the registration needs are read before the search, so that a bad
    # source fails in seconds, not after minutes of dev passes.
    model_dir = resolve_model(args.model, args.tracking_uri)  # read-only: may be the store's own folder
    if from_registry:
        from adapler_pipelines.calibrate import source_config
        from adapler_pipelines.config import MlflowConfig
        from adapler_pipelines.registry import model_version, tracking_uri

        name, alias = parse_model_uri(args.model)  # well-formed: resolve_model checked it
        uri = tracking_uri(MlflowConfig(tracking_uri=args.tracking_uri))
        source = model_version(name, alias, uri)  # RegistryError: one line (adapler_cli.errors)
        config = source_config(name, source, uri)
    elif args.output and Path(args.output).resolve() == model_dir.resolve():
        raise UserError("--output must differ from --model: calibration never overwrites the trained model")
    from adapler.inference import resolve_runtime

    model = load_model(str(model_dir), args.device)  # torch: the model that is saved or registered
    runtime = resolve_runtime(args.runtime, args.device, model_dir=model_dir)  # a family without export: torch
    engine = model if runtime == "torch" else load_model(str(model_dir), args.device, runtime=runtime)
    from adapler.calibration import dev_description

    loader, rows = split_loader(args.data, args.set, model, "dev", args.batch_size, args.max_length)
    data_description = dev_description(args.data, rows)

    print(f"calibrating {args.model} on {data_description}", file=sys.stderr)

    def progress(p: CurvePoint) -> None:
        print(
            f"  factor {p.factor:.4g}: dev accuracy {p.accuracy:.4f}, FLOPs speedup {p.flops_speedup:.2f}x",
            file=sys.stderr,
            flush=True,
        )

    search = _search_points if args.points else _search_factor
    calibrated, register = search(model, engine, loader, rows, args, progress)
    if args.output:
        calibrated.save_pretrained(args.output)
        print(f"saved: {args.output}")
    if from_registry:
        with tempfile.TemporaryDirectory() as tmp:
            directory = args.output or tmp
            if not args.output:
                calibrated.save_pretrained(directory)
            version = register(directory, config, str(source.version), args.set_alias)
        where = f" (alias {args.set_alias})" if args.set_alias else f" (no alias moved; {alias} unchanged)"
        print(f"registered: {name} version {version}{where}")
    elif not args.output:
        print("not saved: give --output DIR to keep the calibrated model")


def _search_factor(model, engine, loader, rows, args: argparse.Namespace, progress):
    """--target-speedup / --max-drop, measured on ``engine`` (``model`` on the chosen runtime):
    the calibrated model, and how to register it."""
    from adapler.calibration import TargetUnreachable, apply_factor, calibrate, dev_description
    from adapler.evaluate import budget_gain

    goals = {"target_speedup": args.target_speedup, "max_drop": args.max_drop}
    if args.against:
        from adapler.evidence import paired_goal, reference_predictions

        reference = reference_predictions(load_model(args.against, args.device), rows, None, args.batch_size)
        goals = {
            "paired": paired_goal(
                model, rows, None, reference, args.max_drop, args.confidence, batch_size=args.batch_size
            )
        }
    try:
        # speedups against the backbone at the length the model was chosen against (reference_max_length)
        result = calibrate(engine, loader, **goals, on_point=progress, flops_gain=budget_gain(model, rows))
    except TargetUnreachable as err:
        print(format_curve(err.points))
        raise UserError(str(err)) from None
    chosen, baseline = result.chosen, result.baseline
    print(format_curve(result.points, chosen))
    print(
        f"chosen factor {chosen.factor:.4g} ({result.goal}): dev accuracy {chosen.accuracy:.4f} "
        f"(as trained {baseline.accuracy:.4f}), FLOPs speedup {chosen.flops_speedup:.2f}x "
        f"(as trained {baseline.flops_speedup:.2f}x)"
    )
    warning = no_pruning_warning(
        chosen.flops_speedup,
        "a larger --max-drop lets the factor rise; if the curve above "
        "falls off a cliff instead, retrain with a larger stage2.phi or stage2.eta_lr",
    )
    if warning:
        print(f"warning: {warning}", file=sys.stderr)

    def register(directory, config, source_version: str, alias: str | None) -> str:
        from adapler_pipelines.calibrate import register_calibrated

        return register_calibrated(
            directory, result, config, source_version, dev_description(args.data, rows), alias=alias
        )

    return apply_factor(model, chosen.factor), register


def _search_points(model, engine, loader, rows, args: argparse.Namespace, progress):
    """--points, measured on ``engine``: the model with its operating points (etas unchanged), and
    how to register it."""
    from adapler.calibration import attach_operating_points
    from adapler.operating_points import PointBudgets

    budgets = PointBudgets() if args.fast_drop is None else PointBudgets(fast=args.fast_drop)
    points = attach_operating_points(
        model, loader, rows, args.data, budgets, engine=engine, on_point=progress, confidence=args.confidence
    )
    print(format_curve(points.curve, names=points.named))
    print(points.listing())

    def register(directory, config, source_version: str, alias: str | None) -> str:
        from adapler_pipelines.calibrate import register_with_points

        return register_with_points(directory, points, config, source_version, alias=alias)

    return model, register
