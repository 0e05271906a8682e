"""Threshold calibration: several speed/accuracy points from ONE trained model, no retraining.

For each goal (target dev FLOPs speedups, and an accuracy budget), `adapler.calibration.calibrate`
searches one global eta factor on the dev split; the chosen factor is then measured on the test
split (accuracy, FLOPs speedup, examples/s with packed removal). Prints every dev point explored
and one test row per goal.

    python bench/calibration.py                                   # the cached RT bench model
    python bench/calibration.py --model DIR --data rotten_tomatoes --targets 2 3 4 --max-drop 0.01
Writes bench/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from adapler.batching import make_loader
from adapler.calibration import TargetUnreachable, apply_factor, calibrate
from adapler.config import load_config
from adapler.evaluate import evaluate
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.data import load_data
from inference import trained_model  # bench/inference.py: the cached bench models

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="AdapLeR model directory (default: the cached bench model of --data)")
    parser.add_argument("--data", default="rotten_tomatoes")
    parser.add_argument("--targets", nargs="+", type=float, default=[2.0, 3.0, 6.0], help="dev FLOPs speedups")
    parser.add_argument("--max-drop", type=float, default=0.01, help="also: the fastest within this dev accuracy drop")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "calibration.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_dir = trained_model(args.data, args.model)
    model = AdapLeRForSequenceClassification.from_pretrained(model_dir).eval()
    data = load_data(load_config(None, [f"data.source={args.data}"]))
    max_length = model.tokenizer.model_max_length
    dev = make_loader(data.dev, model.tokenizer, 32, max_length)
    test = make_loader(data.test, model.tokenizer, 32, max_length)
    backbone = evaluate(model, test, removal="none")
    goals = [{"target_speedup": t} for t in args.targets] + [{"max_drop": args.max_drop}]
    explored, records = {}, []
    for goal in goals:
        try:
            result = calibrate(model, dev, **goal)
        except TargetUnreachable as err:
            print(f"{goal}: {err}")
            continue
        explored.update({p.factor: p for p in result.points})
        measured = evaluate(apply_factor(model, result.chosen.factor), test, removal="packed")
        records.append({
            "goal": result.goal, "factor": result.chosen.factor,
            "dev_accuracy": result.chosen.accuracy, "dev_flops_speedup": result.chosen.flops_speedup,
            "test_accuracy": measured.accuracy, "test_flops_speedup": measured.flops_speedup,
            "test_examples_per_s": measured.examples_per_s,
        })
    print(f"{args.data} {model_dir}: backbone test accuracy {backbone.accuracy:.4f}, "
          f"{backbone.examples_per_s:.1f} examples/s")
    print("dev points explored (factor, accuracy, FLOPs speedup):")
    for factor in sorted(explored):
        p = explored[factor]
        print(f"  {factor:8.4g}  {p.accuracy:.4f}  {p.flops_speedup:5.2f}x")
    print(f"{'goal':>20} {'factor':>8} {'test acc':>9} {'FLOPs x':>8} {'ex/s':>7}")
    for r in records:
        print(f"{r['goal']:>20} {r['factor']:8.4g} {r['test_accuracy']:9.4f} {r['test_flops_speedup']:8.2f} "
              f"{r['test_examples_per_s']:7.1f}")
    report = {"dataset": args.data, "model": str(model_dir), "backbone_test_accuracy": backbone.accuracy,
              "backbone_examples_per_s": backbone.examples_per_s,
              "dev_points": [vars(explored[f]) for f in sorted(explored)], "goals": records}
    Path(args.output).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
