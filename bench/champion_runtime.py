"""A run's chosen model against its own stage-1 backbone on ONNX Runtime int8, as a user runs
them: ``Predictor.predict`` on raw test texts (tokenization, length-sorted batches and the
removal all inside the timing), batch 1 and 32, interleaved repeats, in one run.

This is the measured column of the results table (README, docs/benchmarks.md): the backbone is
the run's best stage-1 checkpoint at its full length (``data.max_length``) with removal off, the
same engine and precision as the chosen model; the ratio is what a deployment would see when it
swaps one for the other.

    python bench/champion_runtime.py --run runs/untuned-bbc_news --data bbc_news --set limit=600
    python bench/champion_runtime.py --run runs/untuned-rotten_tomatoes-64 --data rotten_tomatoes
    python bench/champion_runtime.py --run runs/bbc_titles --name bbc_titles --data files \
        --set train_file=bench/.cache/bbc_titles/train.csv --set dev_file=bench/.cache/bbc_titles/dev.csv \
        --set test_file=bench/.cache/bbc_titles/test.csv

Writes one record per batch size to bench/results/champion_runtime.json, in place of the earlier
record of the same data set, batch size, runtime and precision: {dataset, data, batch_size,
texts, model_texts_per_s, backbone_texts_per_s, measured_speedup, flops_speedup, realization,
model_accuracy, backbone_accuracy, run, runtime, quantize}.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adapler.config import parse_overrides
from adapler.data import load_splits
from adapler.flops import adapler_flops, backbone_flops
from adapler.inference import Predictor
from adapler.run_layout import RunLayout
from adapler.stage1_record import read_stage1
from harness import interleaved, replace_records  # bench/harness.py

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class TimedPredict:
    seconds: float
    predictions: list


def timed_predict(predictor: Predictor, texts: list[str]) -> TimedPredict:
    started = time.perf_counter()
    predictions = predictor.predict(texts)
    return TimedPredict(time.perf_counter() - started, predictions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory of `adapler run` (its model/ and stage1.json)")
    parser.add_argument("--data", required=True, help="the run's data source (bbc_news, rotten_tomatoes, files, ...)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="data option of the run, e.g. limit=600 (as `adapler evaluate --set`)",
    )
    parser.add_argument("--name", help="the data set's name in the records (default: --data)")
    parser.add_argument("--split", default="test", choices=["dev", "test"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved passes per side (the median is kept)")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])
    parser.add_argument("--quantize", default="int8", choices=["int8", "none"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "champion_runtime.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    splits = load_splits(args.data, **parse_overrides(args.set))
    rows = getattr(splits, args.split)
    texts = rows["text"].tolist()
    labels = np.array([splits.label_names[i] for i in rows["label"]])
    backbone_dir = read_stage1(RunLayout(run)).best_model_dir
    records = []
    for batch_size in args.batch_sizes:
        model = Predictor.from_directory(
            run / "model", runtime=args.runtime, quantize=args.quantize, batch_size=batch_size
        )
        reference = model.model.settings.reference_max_length or model.max_length
        backbone = Predictor.from_directory(
            backbone_dir,
            runtime=args.runtime,
            quantize=args.quantize,
            batch_size=batch_size,
            removal="none",
            max_length=reference,
        )
        timed = interleaved(
            {"model": lambda t, m=model: timed_predict(m, t), "backbone": lambda t, b=backbone: timed_predict(b, t)},
            texts,
            args.repeats,
        )
        best = {name: seconds for name, (seconds, _) in timed.items()}
        outputs = {name: last.predictions for name, (_, last) in timed.items()}
        # the spec's speedup: the backbone's FLOPs on the texts at the reference length over the model's
        full = np.array([p.input_tokens for p in outputs["backbone"]])  # (N,)
        lengths = np.array([p.input_tokens for p in outputs["model"]])  # (N,)
        kept = np.array([p.kept_lengths for p in outputs["model"]])  # (N, L)
        flops = float(backbone_flops(full, model.size).sum() / adapler_flops(lengths, kept, model.size).sum())
        record = {
            "dataset": args.name or args.data,
            "data": args.data,
            "split": args.split,
            "batch_size": batch_size,
            "texts": len(texts),
            "model_texts_per_s": len(texts) / best["model"],
            "backbone_texts_per_s": len(texts) / best["backbone"],
            "measured_speedup": best["backbone"] / best["model"],
            "flops_speedup": flops,
            "model_accuracy": float(np.mean([p.label for p in outputs["model"]] == labels)),
            "backbone_accuracy": float(np.mean([p.label for p in outputs["backbone"]] == labels)),
            "run": str(run),
            "backbone": str(backbone_dir),
            "runtime": args.runtime,
            "quantize": args.quantize,
            "threads": args.threads,
            "repeats": args.repeats,
            "date": time.strftime("%Y-%m-%d"),
        }
        record["realization"] = record["measured_speedup"] / flops
        records.append(record)
        print(
            f"{record['dataset']} bs={batch_size:<3d} {args.runtime} {args.quantize}: "
            f"model {record['model_texts_per_s']:.1f} "
            f"vs backbone {record['backbone_texts_per_s']:.1f} texts/s = {record['measured_speedup']:.2f}x measured, "
            f"{flops:.2f}x FLOPs (realization {record['realization']:.2f}); accuracy "
            f"{record['model_accuracy']:.3f} vs {record['backbone_accuracy']:.3f}",
            flush=True,
        )
    replace_records(Path(args.output), records, record_key)


def record_key(record: dict) -> tuple:
    """What a new record replaces: the one of the same data set, batch size, runtime and precision."""
    return record["dataset"], record["batch_size"], record.get("runtime"), record.get("quantize")


if __name__ == "__main__":
    main()
