"""Token removal on the runtime practitioners deploy: torch eager vs ONNX Runtime, fp32 vs int8.

One run, the same test texts (sorted by length, tokenized once), the same models, interleaved
repeats, 2 threads. Every AdapLeR row is compared with the SAME engine's plain backbone at the
same precision (torch vs torch, ONNX Runtime vs ONNX Runtime, int8 vs int8), on the same batches.
Each runtime runs in a process of its own, as a deployment runs one: in one process, torch's
OpenMP workers spin-wait after torch ops and take a core from ONNX Runtime's threads (the Rotten
Tomatoes batch-32 ONNX rows then read a realization of 0.73 to 0.98 from run to run), and
OMP_WAIT_POLICY=PASSIVE, which stops that, slows torch's own rows by up to a third.

  torch-backbone             the HF backbone in PyTorch eager (removal "none")
  torch-adapler              adapler's packed removal in PyTorch
  torch-adapler-no-pruning   the same code with every eta at 0: nothing leaves
  onnx-backbone              the backbone in one ONNX graph (same fused kernels as the layers below)
  onnx-adapler               the per-layer ONNX graphs with removal between them (adapler.onnx_runtime)
  onnx-adapler-no-pruning    the same code with every eta at 0

int8: torch rows use adapler.quantization (dynamic int8 linears); ONNX rows use ONNX Runtime's
dynamic quantization; CPs stay float on both. A no-pruning row faster than its backbone means
the removal path's gain is partly layout (padding), not pruning: read the realization against it.

Models: the cached bench models of bench/inference.py, calibrated on dev to about 2x FLOPs
(Rotten Tomatoes) and 5x (BBC News) with adapler.calibration (cached under bench/.cache).

    python bench/runtime.py
    python bench/runtime.py --datasets rotten_tomatoes --batch-sizes 32 --repeats 3
Writes bench/results/runtime.json: records {dataset, batch_size, engine, quantize, texts_per_s,
ms_per_batch, flops_speedup, accuracy, ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from adapler.backbones import encoder_size
from adapler.calibration import scaled_etas
from adapler.evaluate import TimedPass, timed_pass
from adapler.flops import flops_speedup
from adapler.inference import load_for_inference
from harness import RESULTS, add_dataset_arguments, calibrated_model, interleaved, length_sorted, timed_rows

TARGET_SPEEDUP = {"rotten_tomatoes": 2.0, "bbc_news": 5.0}
ENGINES = ("backbone", "adapler", "adapler-no-pruning")  # x runtime x precision
RUNTIMES = ("torch", "onnx")


class Side:
    """One engine row: a model object, the removal it runs, and an eta factor (0: nothing leaves)."""

    def __init__(self, runtime: str, engine: str, quantize: str, model):
        self.runtime, self.engine, self.quantize, self.model = runtime, engine, quantize, model
        self.removal = "none" if engine == "backbone" else "packed"
        self.factor = 0.0 if engine.endswith("no-pruning") else 1.0
        self.name = f"{runtime}-{engine}"

    def run(self, batches: list[dict]) -> TimedPass:
        with scaled_etas(self.model, self.factor):
            return timed_pass(self.model, batches, self.removal)


def bench_dataset(
    dataset: str, model_dir: Path, batch_sizes: list[int], repeats: int, quantize: list[str], threads: int, runtime: str
) -> list[dict]:
    models = {precision: load_for_inference(model_dir, runtime, "cpu", precision, threads) for precision in quantize}
    sides = [Side(runtime, engine, precision, model) for precision, model in models.items() for engine in ENGINES]
    reference = next(iter(models.values()))
    rows = timed_rows(dataset)
    size = encoder_size(reference.config, reference.settings.cp_hidden)
    records = []
    for batch_size in batch_sizes:
        batches, labels = length_sorted(reference.tokenizer, rows, batch_size)
        input_lengths = torch.cat([b["attention_mask"].sum(-1) for b in batches]).numpy()
        timed = interleaved({side: side.run for side in sides}, batches, repeats)
        base = {(s.runtime, s.quantize): timed[s][0] for s in sides if s.engine == "backbone"}
        for side in sides:
            seconds, last = timed[side]
            speedup = 1.0 if side.removal == "none" else flops_speedup(input_lengths, last.kept, size)
            wallclock = base[(side.runtime, side.quantize)] / seconds
            record = {
                "dataset": dataset,
                "batch_size": batch_size,
                "engine": side.name,
                "quantize": side.quantize,
                "texts": len(rows),
                "mean_input_tokens": float(input_lengths.mean()),
                "texts_per_s": len(rows) / seconds,
                "ms_per_batch": 1000 * seconds / len(batches),
                "flops_speedup": speedup,
                "speedup_vs_same_engine_backbone": wallclock,
                "realization": wallclock / speedup,
                "accuracy": float(np.mean(last.predictions == labels)),
                "mean_kept_per_layer": last.kept.mean(0).round(2).tolist(),
                "model": str(model_dir),
            }
            records.append(record)
            print(
                f"{dataset:16s} bs={batch_size:<3d} {side.quantize:4s} {side.name:26s} "
                f"{record['texts_per_s']:8.1f} texts/s {record['ms_per_batch']:8.2f} ms/batch  "
                f"FLOPs x{speedup:5.2f}  vs backbone x{wallclock:5.2f}  "
                f"realization {record['realization']:.2f}  acc {record['accuracy']:.3f}",
                flush=True,
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataset_arguments(parser)  # a given model is used as is; by default the bench model, calibrated
    parser.add_argument("--quantize", nargs="+", default=["none", "int8"], choices=["none", "int8"])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per engine (median is kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--runtimes",
        nargs="+",
        default=list(RUNTIMES),
        choices=RUNTIMES,
        help="each in a process of its own (module docstring)",
    )
    parser.add_argument("--output", default=str(RESULTS / "runtime.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    given = {"rotten_tomatoes": args.model_rotten_tomatoes, "bbc_news": args.model_bbc_news}
    models = {dataset: calibrated_model(dataset, given[dataset], TARGET_SPEEDUP[dataset]) for dataset in args.datasets}
    if len(args.runtimes) == 1:
        records = [
            record
            for dataset, model_dir in models.items()
            for record in bench_dataset(
                dataset, model_dir, args.batch_sizes, args.repeats, args.quantize, args.threads, args.runtimes[0]
            )
        ]
    else:
        records = []
        with tempfile.TemporaryDirectory() as scratch:
            for runtime in args.runtimes:
                part = Path(scratch) / f"{runtime}.json"
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--runtimes",
                        runtime,
                        "--output",
                        str(part),
                        "--datasets",
                        *args.datasets,
                        "--batch-sizes",
                        *map(str, args.batch_sizes),
                        "--repeats",
                        str(args.repeats),
                        "--quantize",
                        *args.quantize,
                        "--threads",
                        str(args.threads),
                        "--model-rotten-tomatoes",
                        str(models.get("rotten_tomatoes", "")),
                        "--model-bbc-news",
                        str(models.get("bbc_news", "")),
                    ],
                    check=True,
                )
                records += json.loads(part.read_text())
        order = {dataset: i for i, dataset in enumerate(args.datasets)}
        records.sort(key=lambda r: (order[r["dataset"]], r["batch_size"]))  # stable: runtimes in turn
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(records, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
