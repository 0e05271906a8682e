"""Where running batches side by side pays on ONNX Runtime (the evidence for
``adapler.onnx_runtime.SIDE_BY_SIDE_LENGTH`` and ``SIDE_BY_SIDE_TOKENS``).

A run's chosen model and its own stage-1 backbone, each timed by ``Predictor.predict`` on the same
test texts (tokenization and length-sorted batches included), at each batch size, two ways: every
batch one at a time on all threads (intra-op parallelism), and every batch side by side, one core
each, on single-thread sessions. Interleaved repeats, in one run (bench/harness.py).

    python bench/side_by_side.py --run runs/bbc_titles --name bbc_titles --data files \\
        --set train_file=bench/.cache/bbc_titles/train.csv --set dev_file=bench/.cache/bbc_titles/dev.csv \\
        --set test_file=bench/.cache/bbc_titles/test.csv --batch-sizes 32
    python bench/side_by_side.py --run runs/untuned-rotten_tomatoes-64 --data rotten_tomatoes --batch-sizes 32
    python bench/side_by_side.py --run runs/untuned-bbc_news --data bbc_news --set limit=600 --texts 48 \\
        --max-length 64 128 256 512 --batch-sizes 2 8 32

Writes one record per (data set, max length, batch size) to bench/results/side_by_side.json, in
place of the earlier one: {dataset, max_length, batch_size, tokens_per_batch (mean padded B x T of
the backbone's batches), longest, and per side (model, backbone) the seconds one at a time, side by
side, and their ratio (above 1: side by side is faster)}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import adapler.onnx_runtime as onnx_runtime
from adapler.batching import sorted_batches
from adapler.config import parse_overrides
from adapler.data import load_splits
from adapler.inference import Predictor
from adapler.run_layout import RunLayout
from adapler.stage1_record import read_stage1
from champion_runtime import TimedPredict, timed_predict  # bench/champion_runtime.py
from harness import interleaved, replace_records  # bench/harness.py

RESULTS = Path(__file__).resolve().parent / "results"


def predictor(directory: Path, batch_size: int, max_length: int | None, removal: str) -> Predictor:
    return Predictor.from_directory(
        directory, runtime="onnx", quantize="int8", batch_size=batch_size, removal=removal, max_length=max_length
    )


def way(model: Predictor, side_by_side: bool):
    """A timed pass of ``model`` over texts with its small batches side by side, or one at a time."""

    def run(texts: list[str]) -> TimedPredict:
        model.model.side_by_side = side_by_side
        return timed_predict(model, texts)

    return run


WAYS = {"one_at_a_time": False, "side_by_side": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run directory of `adapler run` (its model/ and stage1.json)")
    parser.add_argument("--data", required=True, help="the run's data source (bbc_news, rotten_tomatoes, files, ...)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="data option of the run")
    parser.add_argument("--name", help="the data set's name in the records (default: --data)")
    parser.add_argument("--texts", type=int, help="the first N test texts (default: all)")
    parser.add_argument("--max-length", type=int, nargs="+", default=[0], help="input budgets (0: the model's own)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved passes per way and side (median kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(RESULTS / "side_by_side.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # every batch side by side when asked: the boundary is what this measures
    onnx_runtime.SIDE_BY_SIDE_LENGTH = onnx_runtime.SIDE_BY_SIDE_TOKENS = 1 << 30
    run = Path(args.run)
    texts = load_splits(args.data, **parse_overrides(args.set)).test["text"].tolist()[: args.texts]
    backbone_dir = read_stage1(RunLayout(run)).best_model_dir
    records = []
    for max_length in args.max_length:
        for batch_size in args.batch_sizes:
            model = predictor(run / "model", batch_size, max_length or None, "packed")
            length = max_length or model.model.settings.reference_max_length or model.max_length
            backbone = predictor(backbone_dir, batch_size, length, "none")
            shapes = [
                tuple(batch["input_ids"].shape)
                for _, batch in sorted_batches(backbone.model.tokenizer, texts, None, batch_size, length)
            ]
            passes = {
                (side, name): way(pred, on)
                for side, pred in (("model", model), ("backbone", backbone))
                for name, on in WAYS.items()
            }
            timed = interleaved(passes, texts, args.repeats)
            record = {
                "dataset": args.name or args.data,
                "max_length": length,
                "batch_size": batch_size,
                "texts": len(texts),
                "tokens_per_batch": float(np.mean([b * t for b, t in shapes])),
                "longest": int(max(t for _, t in shapes)),
                "threads": args.threads,
                "repeats": args.repeats,
                "date": time.strftime("%Y-%m-%d"),
            }
            for side in ("model", "backbone"):
                alone, paired = timed[(side, "one_at_a_time")][0], timed[(side, "side_by_side")][0]
                record[side] = {"one_at_a_time_s": alone, "side_by_side_s": paired, "gain": alone / paired}
            records.append(record)
            print(
                f"{record['dataset']} max_length {length} bs {batch_size}: {record['tokens_per_batch']:.0f} tokens a "
                f"batch; side by side / one at a time: model {record['model']['gain']:.2f}x, "
                f"backbone {record['backbone']['gain']:.2f}x",
                flush=True,
            )
    replace_records(Path(args.output), records, key)


def key(record: dict) -> tuple:
    """What a new record replaces: the same data set, input budget and batch size."""
    return record["dataset"], record["max_length"], record["batch_size"]


if __name__ == "__main__":
    main()
