"""Does the FLOPs saving of AdapLeR turn into wall-clock time? Measured in one run, same weights.

For each data set (Rotten Tomatoes: short reviews; BBC News: long articles) and batch size
(1, 32), times three forwards over the same test texts and batches:
  none    the plain backbone (HF forward, SDPA attention, padding-masked)
  masked  AdapLeR with removed tokens masked (the authors' batched evaluation: saves nothing)
  packed  AdapLeR with removed tokens really gone (adapler's default)
and prints throughput, FLOPs speedup, wall-clock speedup over `none` and their ratio, the
*realization*. With `--quantize none int8` each mode also runs int8 (adapler.quantization):
int8 rows are compared with the int8 `none` row (same precision), and report their accuracy. Texts are sorted by length before batching, for every mode alike (what
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
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from adapler.batching import encode, token_counts
from adapler.config import load_config
from adapler.flops import EncoderSize, flops_speedup
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.quantization import maybe_quantize
from adapler.data import load_data
from adapler.recipe import run_recipe

HERE = Path(__file__).resolve().parent
MODES = ("none", "masked", "packed")
# Short training runs for the benchmark's models (minutes on 2 cores); cached under bench/.cache.
BENCH_TRAINING = {
    "rotten_tomatoes": [
        "data.source=rotten_tomatoes", "data.max_length=64", "data.limit=2000",
        "stage1.epochs=1", "stage1.lr=5e-5", "stage2.epochs=2", "stage2.init=finetuned",
        "stage2.phi=0.015", "stage2.length_unit=tokens", "stage2.predictor_lr=1e-3", "stage2.eta_lr=2e-2", "saliency_checkpoints=1",
    ],
    "bbc_news": [
        "data.source=bbc_news", "data.max_length=512", "data.limit=240",
        "stage1.epochs=2", "stage1.lr=1e-4", "stage1.batch_size=16", "stage2.epochs=2",
        "stage2.batch_size=16", "stage2.init=finetuned", "stage2.phi=0.005", "stage2.length_unit=tokens", "stage2.predictor_lr=1e-3",
        "stage2.eta_lr=5e-2", "saliency_checkpoints=1",
    ],
}
TEXTS_PER_SET = {"rotten_tomatoes": 512, "bbc_news": 96}


def trained_model(dataset: str, given: str | None) -> Path:
    if given:
        return Path(given)
    cache = HERE / ".cache"
    model_dir = cache / f"bench-{dataset}" / "model"
    if not (model_dir / "config.json").is_file():
        print(f"[{dataset}] no --model given: training a short model into {model_dir} (cached)")
        config = load_config(None, [*BENCH_TRAINING[dataset], f"name=bench-{dataset}", f"output_dir={cache}"])
        result = run_recipe(config)
        print(f"[{dataset}] trained: {json.dumps(result.to_dict())}")
    return model_dir


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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: time them to the end


@torch.inference_mode()
def time_mode(model, batches, mode: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Seconds for one pass over the batches; predictions; kept lengths (N, L)."""
    device = next(model.parameters()).device
    predictions, kept = [], []
    _synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        out = model(**batch, removal=mode)
        predictions.append(out.logits.argmax(-1))
        kept.append(out.kept_lengths)
    _synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, torch.cat(predictions).cpu().numpy(), torch.cat(kept).cpu().numpy()


def bench_dataset(dataset: str, model_dir: Path, batch_sizes: list[int], repeats: int, quantize: list[str],
                  device: str = "cpu") -> list[dict]:
    float_model = AdapLeRForSequenceClassification.from_pretrained(model_dir).eval()
    records = []
    for precision in quantize:
        model = maybe_quantize(float_model, precision).to(device)
        records += [{**r, "model": str(model_dir), "device": device}
                    for r in bench_model(dataset, model, precision, batch_sizes, repeats)]
    return records


def bench_model(dataset: str, model, precision: str, batch_sizes: list[int], repeats: int) -> list[dict]:
    config = load_config(None, [f"data.source={dataset}"])
    rows = load_data(config).test.head(TEXTS_PER_SET[dataset])
    tok = model.tokenizer
    rows = rows.iloc[np.argsort(token_counts(tok, rows["text"].tolist()), kind="stable")]
    labels = rows["label"].to_numpy()
    size = EncoderSize.from_config(model.config, model.settings.cp_hidden)
    records = []
    for batch_size in batch_sizes:
        batches = [
            encode(tok, rows["text"].iloc[i : i + batch_size].tolist(), None)
            for i in range(0, len(rows), batch_size)
        ]
        input_lengths = torch.cat([b["attention_mask"].sum(-1) for b in batches]).numpy()
        device = next(model.parameters()).device
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
        for mode in MODES:  # warm-up
            time_mode(model, batches[:2], mode)
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        results = {}
        for _ in range(repeats):  # interleaved, so drift hits every mode alike
            for mode in MODES:
                seconds, predictions, kept = time_mode(model, batches, mode)
                times[mode].append(seconds)
                results[mode] = (predictions, kept)
        base = statistics.median(times["none"])
        for mode in MODES:
            predictions, kept = results[mode]
            seconds = statistics.median(times[mode])
            speedup = 1.0 if mode == "none" else flops_speedup(input_lengths, kept, size)
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
                "accuracy": float(np.mean(predictions == labels)),
            }
            if batch_size == 1 and precision == "none" and device.type == "cpu":  # float weights; int8 ones are packed
                record["weight_read_floor_ms"] = weight_read_floor_ms(model)
            records.append(record)
            print(
                f"{dataset:16s} bs={batch_size:<3d} {precision:4s} {mode:7s} {record['examples_per_s']:8.1f} ex/s  "
                f"FLOPs x{speedup:5.2f}  wall x{wallclock:5.2f}  realization {record['realization']:.2f}  "
                f"acc {record['accuracy']:.3f}"
                + (f"  ({record['ms_per_batch']:.1f} ms/text, weight-read floor "
                   f"{record['weight_read_floor_ms']:.1f} ms)" if "weight_read_floor_ms" in record else "")
            )
    return records


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The models, data sets and batch sizes of an inference benchmark (this one and bench/runtime.py)."""
    parser.add_argument("--model-rotten-tomatoes", help="AdapLeR model for rotten_tomatoes (default: the bench model)")
    parser.add_argument("--model-bbc-news", help="AdapLeR model for bbc_news (default: the bench model)")
    parser.add_argument("--datasets", nargs="+", default=["rotten_tomatoes", "bbc_news"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per mode (median is kept)")
    parser.add_argument("--quantize", nargs="+", default=["none"], choices=["none", "int8"],
                        help="precisions to run, each against its own plain backbone (default: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (int8 is CPU only)")
    parser.add_argument("--output", default=str(HERE / "results" / "inference.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.device != "cpu" and "int8" in args.quantize:
        parser.error("--quantize int8 is torch's CPU dynamic quantization: use it with --device cpu")
    given = {"rotten_tomatoes": args.model_rotten_tomatoes, "bbc_news": args.model_bbc_news}
    records = []
    for dataset in args.datasets:
        records += bench_dataset(dataset, trained_model(dataset, given[dataset]), args.batch_sizes, args.repeats,
                                 args.quantize, args.device)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(records, indent=2))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
