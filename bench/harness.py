"""What the inference benchmarks share (bench/inference.py, bench/runtime.py,
bench/champion_runtime.py): the cached bench models, the test texts they time (sorted by length,
batched and tokenized before any clock starts), and the timing of several engines on the same
batches, interleaved.

The benchmarks run as scripts (`python bench/inference.py`, from the repository root or
anywhere): Python puts bench/ first on the path, so they import this module by its name.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from adapler.batching import make_loader, sorted_batches
from adapler.calibration import apply_factor, calibrate
from adapler.config import load_config
from adapler.data import load_data
from adapler.evaluate import TimedPass
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.recipe import run_recipe
from adapler.run_layout import RunLayout

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"  # trained and calibrated bench models (git-ignored)
RESULTS = HERE / "results"
# Short training runs for the benchmark's models (minutes on 2 cores); cached under bench/.cache.
BENCH_TRAINING = {
    "rotten_tomatoes": [
        "data.source=rotten_tomatoes",
        "data.max_length=64",
        "data.limit=2000",
        "stage1.epochs=1",
        "stage1.lr=5e-5",
        "stage2.epochs=2",
        "stage2.init=finetuned",
        "stage2.phi=0.015",
        "stage2.length_unit=tokens",
        "stage2.predictor_lr=1e-3",
        "stage2.eta_lr=2e-2",
        "saliency_checkpoints=1",
    ],
    "bbc_news": [
        "data.source=bbc_news",
        "data.max_length=512",
        "data.limit=240",
        "stage1.epochs=2",
        "stage1.lr=1e-4",
        "stage1.batch_size=16",
        "stage2.epochs=2",
        "stage2.batch_size=16",
        "stage2.init=finetuned",
        "stage2.phi=0.005",
        "stage2.length_unit=tokens",
        "stage2.predictor_lr=1e-3",
        "stage2.eta_lr=5e-2",
        "saliency_checkpoints=1",
    ],
}
TEXTS_PER_SET = {"rotten_tomatoes": 512, "bbc_news": 96}


def trained_model(dataset: str, given: str | None) -> Path:
    """``given``, or the bench model of ``dataset`` (:data:`BENCH_TRAINING`), trained on first use."""
    if given:
        return Path(given)
    model_dir = RunLayout(CACHE / f"bench-{dataset}").model
    if not (model_dir / "config.json").is_file():
        print(f"[{dataset}] no --model given: training a short model into {model_dir} (cached)")
        config = load_config(None, [*BENCH_TRAINING[dataset], f"name=bench-{dataset}", f"output_dir={CACHE}"])
        result = run_recipe(config)
        print(f"[{dataset}] trained: {json.dumps(result.to_dict())}")
    return model_dir


def calibrated_model(dataset: str, given: str | None, target: float) -> Path:
    """``given``, or the bench model of ``dataset`` with its etas scaled (on dev) to ``target``
    FLOPs speedup, made on first use."""
    if given:
        return Path(given)
    directory = CACHE / f"runtime-{dataset}-{target:g}x"
    if not (directory / "config.json").is_file():
        model = AdapLeRForSequenceClassification.from_pretrained(trained_model(dataset, None)).eval()
        dev = load_data(load_config(None, [f"data.source={dataset}"])).dev
        loader = make_loader(dev, model.tokenizer, 32, model.tokenizer.model_max_length)
        chosen = calibrate(model, loader, target_speedup=target).chosen
        print(
            f"[{dataset}] calibrated to {target:g}x on dev: factor {chosen.factor:.3g}, "
            f"dev accuracy {chosen.accuracy:.3f}, dev FLOPs speedup {chosen.flops_speedup:.2f}x"
        )
        apply_factor(model, chosen.factor).save_pretrained(directory)
    return directory


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The models, data sets and batch sizes of an inference benchmark."""
    parser.add_argument("--model-rotten-tomatoes", help="AdapLeR model for rotten_tomatoes (default: the bench model)")
    parser.add_argument("--model-bbc-news", help="AdapLeR model for bbc_news (default: the bench model)")
    parser.add_argument("--datasets", nargs="+", default=["rotten_tomatoes", "bbc_news"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])


def timed_rows(dataset: str) -> pd.DataFrame:
    """The first :data:`TEXTS_PER_SET` test rows of ``dataset``."""
    return load_data(load_config(None, [f"data.source={dataset}"])).test.head(TEXTS_PER_SET[dataset])


def length_sorted(tokenizer, rows: pd.DataFrame, batch_size: int) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """The batches every engine runs, sorted by token count (stable) as Predictor runs them, each
    padded to its own longest, and the labels (N,) in their order."""
    pairs = sorted_batches(tokenizer, rows["text"].tolist(), None, batch_size)
    order = np.concatenate([chunk for chunk, _ in pairs])
    return [batch for _, batch in pairs], rows["label"].to_numpy()[order]


def interleaved(
    passes: dict[Hashable, Callable[[list[dict]], TimedPass]], batches: list[dict], repeats: int
) -> dict[Hashable, tuple[float, TimedPass]]:
    """Each engine's median seconds over ``repeats`` passes and its last pass (any record with
    ``seconds``: a TimedPass over batches, or a timed ``Predictor.predict`` over texts). The
    engines take turns, ``repeats`` times, so that drift hits every engine alike; each turn is an
    untimed pass, then the timed one, so that every timed pass runs as a deployment serving that one
    engine runs: its weights in the caches and the thread pool of the engine before it at rest
    (right after another engine's pass, ONNX Runtime ran a short pass here about a quarter slower:
    the other pool spins on the same cores for some milliseconds, and the caches hold its weights)."""
    seconds: dict[Hashable, list[float]] = {key: [] for key in passes}
    last: dict[Hashable, TimedPass] = {}
    for _ in range(repeats):
        for key, run in passes.items():
            run(batches)
            last[key] = run(batches)
            seconds[key].append(last[key].seconds)
    return {key: (statistics.median(seconds[key]), last[key]) for key in passes}


def replace_records(output: Path, records: list[dict], key: Callable[[dict], Hashable]) -> None:
    """Write ``records`` to the JSON list in ``output`` in place of its records of the same key
    (the file holds the current record of each; git keeps the earlier ones)."""
    earlier = json.loads(output.read_text()) if output.is_file() else []
    measured = {key(record) for record in records}
    output.write_text(json.dumps([r for r in earlier if key(r) not in measured] + records, indent=2) + "\n")
