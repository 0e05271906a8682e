"""Does the FLOPs saving of AdapLeR turn into wall-clock time? Measured in one run, same weights.

For each data set (Rotten Tomatoes: short reviews; BBC News: long articles) and batch size
(1, 32), times three forwards over the same test texts and batches:
  none    the plain backbone (HF forward, SDPA attention, padding-masked)
  masked  AdapLeR with removed tokens masked (the authors' batched evaluation: saves nothing)
  packed  AdapLeR with removed tokens really gone (adapler's default)
and prints throughput, FLOPs speedup, wall-clock speedup over `none` and their ratio, the
*realization*. With `--quantize none int8` each mode also runs int8 (adapler.quantization):
int8 rows are compared with the int8 `none` row (same precision), and report their accuracy.
Texts are sorted by length before batching, for every mode alike (what
adapler.inference.Predictor does), so the baseline wastes little on padding.

    python bench/inference.py                      # trains short cached models if needed
    python bench/inference.py --model-rotten-tomatoes DIR --model-bbc-news DIR
    python bench/inference.py --datasets rotten_tomatoes --batch-sizes 32 --quantize none int8
    python bench/inference.py --device cuda --model-rotten-tomatoes DIR --datasets rotten_tomatoes
Writes bench/results/inference.json (a list of records).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from adapler.backbones import encoder_size
from adapler.evaluate import timed_pass
from adapler.flops import flops_speedup
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.quantization import maybe_quantize
from harness import RESULTS, add_dataset_arguments, interleaved, length_sorted, timed_rows, trained_model

MODES = ("none", "masked", "packed")


def weight_read_floor_ms(model: torch.nn.Module) -> float:
    """Time to stream the encoder's weights once from memory: the floor of a batch-1 forward."""
    weights = sum(p.numel() * p.element_size() for p in model.backbone.parameters())
    buffer = torch.empty(weights // 4, dtype=torch.float32).normal_()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def bench_dataset(
    dataset: str, model_dir: Path, batch_sizes: list[int], repeats: int, quantize: list[str], device: str = "cpu"
) -> list[dict]:
    float_model = AdapLeRForSequenceClassification.from_pretrained(model_dir).eval()
    records = []
    for precision in quantize:
        model = maybe_quantize(float_model, precision).to(device)
        records += [
            {**r, "model": str(model_dir), "device": device}
            for r in bench_model(dataset, model, precision, batch_sizes, repeats)
        ]
    return records


def bench_model(dataset: str, model, precision: str, batch_sizes: list[int], repeats: int) -> list[dict]:
    rows = timed_rows(dataset)
    size = encoder_size(model.config, model.settings.cp_hidden)
    device = next(model.parameters()).device
    records = []
    for batch_size in batch_sizes:
        batches, labels = length_sorted(model.tokenizer, rows, batch_size)
        input_lengths = torch.cat([b["attention_mask"].sum(-1) for b in batches]).numpy()
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        timed = interleaved({mode: lambda b, mode=mode: timed_pass(model, b, mode) for mode in MODES}, batches, repeats)
        base = timed["none"][0]
        for mode in MODES:
            seconds, last = timed[mode]
            speedup = 1.0 if mode == "none" else flops_speedup(input_lengths, last.kept, size)
            wallclock = base / seconds
            record = {
                "dataset": dataset,
                "batch_size": batch_size,
                "mode": mode,
                "quantize": precision,
                "examples": len(rows),
                "mean_input_tokens": float(input_lengths.mean()),
                "examples_per_s": len(rows) / seconds,
                "ms_per_batch": 1000 * seconds / len(batches),
                "flops_speedup": speedup,
                "wallclock_speedup": wallclock,
                "realization": wallclock / speedup,
                "accuracy": float(np.mean(last.predictions == labels)),
            }
            if batch_size == 1 and precision == "none" and device.type == "cpu":  # float weights; int8 ones are packed
                record["weight_read_floor_ms"] = weight_read_floor_ms(model)
            records.append(record)
            print(
                f"{dataset:16s} bs={batch_size:<3d} {precision:4s} {mode:7s} {record['examples_per_s']:8.1f} ex/s  "
                f"FLOPs x{speedup:5.2f}  wall x{wallclock:5.2f}  realization {record['realization']:.2f}  "
                f"acc {record['accuracy']:.3f}"
                + (
                    f"  ({record['ms_per_batch']:.1f} ms/text, weight-read floor "
                    f"{record['weight_read_floor_ms']:.1f} ms)"
                    if "weight_read_floor_ms" in record
                    else ""
                )
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per mode (median is kept)")
    parser.add_argument(
        "--quantize",
        nargs="+",
        default=["none"],
        choices=["none", "int8"],
        help="precisions to run, each against its own plain backbone (default: none)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (int8 is CPU only)")
    parser.add_argument("--output", default=str(RESULTS / "inference.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device != "cpu" and "int8" in args.quantize:
        parser.error("--quantize int8 is torch's CPU dynamic quantization: use it with --device cpu")
    given = {"rotten_tomatoes": args.model_rotten_tomatoes, "bbc_news": args.model_bbc_news}
    records = []
    for dataset in args.datasets:
        records += bench_dataset(
            dataset, trained_model(dataset, given[dataset]), args.batch_sizes, args.repeats, args.quantize, args.device
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(records, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
