"""Why batch 1 realizes less: the time of one encoder layer as a function of the tokens it holds.

A pruned long document keeps a few dozen tokens in the last layers. This times, on the packaged
backbone (weights as loaded; the AdapLeR parts play no role), at each row count n:
  gemms      the layer's four weight matrices (QKV, attention output, FFN in, FFN out), each
             called back to back (min of many calls: the weights stay in cache)
  layer_hot  one whole layer (the packed batch-1 path, adapler's `_layer`) called back to back
  layer_seq  the six layers one after the other, per layer: what a forward pays, each layer's
             7 MB of weights read after the other layers' (min over passes)
and prints ms and GFLOP/s (adapler.flops.layer_flops, spec section 6). Where ms stops falling
with n, the layer is bound by reading its weights, not by FLOPs, and removing more tokens there
saves FLOPs without saving time.

    python bench/layer_floor.py
    python bench/layer_floor.py --rows 30 60 120 240 400 --threads 2
    python bench/layer_floor.py --profile-rows 30   # also: torch.profiler table of one layer at 30 tokens
Writes bench/results/layer_floor.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from adapler.config import ModelConfig
from adapler.flops import EncoderSize, layer_flops
from adapler.modeling import AdapLeRForSequenceClassification, _SingleRows

HERE = Path(__file__).resolve().parent


def min_ms(fn, calls: int) -> float:
    """Fastest of `calls` runs of fn, in ms (after 3 warm-up runs)."""
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def measure(model: AdapLeRForSequenceClassification, rows: int, calls: int) -> dict:
    config = model.config
    layers = model.base_model.encoder.layer
    x = torch.randn(rows, config.hidden_size)  # (n, H): one example's kept tokens
    one_example = _SingleRows(torch.arange(rows))  # x is its own grid: no scatter, no mask

    def run_layer(index: int) -> torch.Tensor:
        return model._layer(index, x, one_example)

    def run_all_layers() -> None:
        for index in range(len(layers)):
            run_layer(index)

    first = layers[0]
    attn = first.attention.self
    weights = [
        (torch.cat([attn.query.weight, attn.key.weight, attn.value.weight]),
         torch.cat([attn.query.bias, attn.key.bias, attn.value.bias])),
        (first.attention.output.dense.weight, first.attention.output.dense.bias),
        (first.intermediate.dense.weight, first.intermediate.dense.bias),
        (first.output.dense.weight, first.output.dense.bias),
    ]
    inputs = [torch.randn(rows, w.shape[1]) for w, _ in weights]
    gemms = sum(min_ms(lambda: F.linear(i, w, b), calls) for i, (w, b) in zip(inputs, weights))
    gflop = float(layer_flops(rows, EncoderSize.from_config(config))) / 1e9
    record = {
        "rows": rows,
        "gemms_ms": gemms,
        "layer_hot_ms": min_ms(lambda: run_layer(0), calls),
        "layer_seq_ms": min_ms(run_all_layers, max(3, calls // len(layers))) / len(layers),
        "layer_gflop": gflop,
    }
    for key in ("gemms", "layer_hot", "layer_seq"):
        record[f"{key}_gflops_per_s"] = gflop / record[f"{key}_ms"] * 1e3
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", type=int, default=[24, 32, 48, 64, 96, 128, 192, 256, 400])
    parser.add_argument("--calls", type=int, default=100, help="timed calls per figure (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "layer_floor.json"))
    parser.add_argument("--profile-rows", type=int, help="also profile one layer at this many tokens (op table)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = AdapLeRForSequenceClassification.from_backbone(ModelConfig().backbone_path(), num_labels=2).eval()
    records = []
    print(f"{'rows':>5} {'4 GEMMs ms':>11} {'GF/s':>5} {'layer hot ms':>13} {'GF/s':>5} {'layer in seq ms':>16} {'GF/s':>5}")
    with torch.inference_mode():
        for rows in args.rows:
            r = measure(model, rows, args.calls)
            records.append(r)
            print(f"{rows:5d} {r['gemms_ms']:11.2f} {r['gemms_gflops_per_s']:5.0f} {r['layer_hot_ms']:13.2f} "
                  f"{r['layer_hot_gflops_per_s']:5.0f} {r['layer_seq_ms']:16.2f} {r['layer_seq_gflops_per_s']:5.0f}", flush=True)
        if args.profile_rows:
            x = torch.randn(args.profile_rows, model.config.hidden_size)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(args.calls):
                    model._layer(0, x, _SingleRows(torch.arange(args.profile_rows)))
            print(f"one layer at {args.profile_rows} tokens, {args.calls} calls:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    for r in records:
        r["threads"] = args.threads
    Path(args.output).write_text(json.dumps(records, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
