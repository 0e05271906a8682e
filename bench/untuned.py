"""The pipeline on data nobody tuned for, against what a practitioner would do instead.

    python bench/untuned.py --datasets rotten_tomatoes bbc_titles bbc_news          # full data: hours
    python bench/untuned.py --datasets rotten_tomatoes bbc_titles --set data.limit=600 --set tune.num_samples=2

Per data set, on the same splits, in one run:
- ``adapler``: ``adapler run`` with the preset's own defaults and Tune section (no hand-narrowed
  ranges): ``rotten_tomatoes`` and ``bbc_news`` presets; ``bbc_titles`` (bench/unseen_data.py:
  BBC headlines, a set no preset was tuned on) through the ``files`` preset, as a user brings a CSV.
- ``backbone``: that run's stage-1 model at the full input length (the reference of every ratio).
- ``truncate-<T>`` (T = 32, 64, 128 below the longest test text): the backbone fine-tuned the
  same way (the preset's stage-1 loop and settings) on texts cut to T tokens, tested cut alike.
- ``layers-<k>`` (k = half the layers): the first k layers, fine-tuned the same way.

``flops_speedup`` is always backbone FLOPs at full length over the variant's FLOPs on the same
test texts (adapler/flops.py). ``--set`` overrides apply to every data set. Writes
bench/results/untuned.json: one record per (dataset, variant), replacing the data sets it ran.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from transformers import AutoModelForSequenceClassification

from adapler.backbones import encoder_size
from adapler.batching import make_loader, token_counts
from adapler.config import load_config, resolve_preset
from adapler.data import load_data
from adapler.evaluate import evaluate
from adapler.flops import input_budget_gain
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.recipe import new_model
from adapler.run_layout import RunLayout
from adapler.selection import NO_PRUNING_FLOOR
from adapler.training import train_stage1
from adapler_pipelines.config import PipelineConfig

HERE = Path(__file__).resolve().parent
TRUNCATIONS = (32, 64, 128)


def dataset_overrides(dataset: str) -> tuple[str, list[str]]:
    """(preset, overrides) that run ``dataset`` as a user would."""
    if dataset == "bbc_titles":
        from unseen_data import bbc_titles  # bench/unseen_data.py

        files = bbc_titles(HERE / ".cache" / "bbc_titles")
        return "files", ["name=bbc_titles", *(f"data.{split}_file={path}" for split, path in files.items())]
    return dataset, []


def static_variant(config: PipelineConfig, data, max_length: int, layers: int | None) -> tuple[float, object]:
    """Fine-tune the backbone as stage 1 does (at ``max_length``, on its first ``layers``
    layers); returns (test accuracy, the model)."""
    if layers is None:
        model = new_model(config, data)
    else:
        backbone = AutoModelForSequenceClassification.from_pretrained(
            config.model.backbone_path(),
            num_labels=len(data.label_names),
            num_hidden_layers=layers,
            attn_implementation="sdpa",
            ignore_mismatched_sizes=True,
        )
        template = new_model(config, data)
        model = AdapLeRForSequenceClassification(backbone, template.settings, template.tokenizer)
    model.tokenizer.model_max_length = max_length
    tok = model.tokenizer
    train = make_loader(data.train, tok, config.stage1.batch_size, max_length, shuffle=True, seed=config.stage1.seed)
    dev = make_loader(data.dev, tok, config.stage1.batch_size, max_length)
    train_stage1(model, train, dev, config.stage1, progress=True)
    test = make_loader(data.test, tok, 32, max_length)
    return evaluate(model, test, removal="none", progress=True, desc="test").accuracy, model


def trials_that_pruned(run_dir: Path) -> tuple[int, int]:
    table = pd.read_csv(RunLayout(run_dir).report / "pareto.csv", dtype={"trial": str})
    trained = table[table.factor == 1.0]
    best = trained.groupby("trial")["dev_flops_speedup"].max()
    return len(best), int((best >= NO_PRUNING_FLOOR).sum())


def bench_dataset(dataset: str, extra: list[str], reuse_stage1: bool = False, static: bool = True) -> list[dict]:
    from adapler_pipelines.run import earlier_stage1, run_pipeline

    preset, overrides = dataset_overrides(dataset)
    config = load_config(resolve_preset(preset), [*overrides, *extra], cls=PipelineConfig)
    stage1_from = earlier_stage1(config) if reuse_stage1 else None
    summary = run_pipeline(config, stage1_only_from=stage1_from)
    data = load_data(config)
    texts, pairs = data.test["text"].tolist(), data.test["text_pair"].tolist()
    chosen = AdapLeRForSequenceClassification.from_pretrained(summary.model_dir)
    size = encoder_size(chosen.config)
    full = token_counts(chosen.tokenizer, texts, pairs, config.data.max_length)
    trials, pruned = trials_that_pruned(Path(summary.run_dir))
    records = [
        {
            "dataset": dataset,
            "variant": "backbone",
            "test_accuracy": summary.backbone_test_accuracy,
            "flops_speedup": 1.0,
            "max_length": config.data.max_length,
        },
        {
            "dataset": dataset,
            "variant": "adapler",
            "test_accuracy": summary.adapler_test_accuracy,
            "flops_speedup": summary.flops_speedup,
            "dev_flops_speedup": summary.chosen["dev_flops_speedup"],
            "eta_factor": summary.chosen["factor"],
            "input_budget": summary.input_budget,
            "trials": trials,
            "trials_that_pruned": pruned,
            "no_pruning": summary.no_pruning,
            "within_tolerance": summary.within_tolerance,
            "params": summary.chosen["params"],
            "wall_seconds": summary.wall_seconds,
            "stage1_reused": stage1_from is not None,
        },
    ]
    if not static:
        return _stamped_and_printed(records, extra)
    for length in [t for t in TRUNCATIONS if t < max(full)]:  # a cut no test text reaches changes nothing
        accuracy, _ = static_variant(config, data, length, None)
        records.append(
            {
                "dataset": dataset,
                "variant": f"truncate-{length}",
                "test_accuracy": accuracy,
                "flops_speedup": input_budget_gain(full, token_counts(chosen.tokenizer, texts, pairs, length), size),
            }
        )
    half = size.num_layers // 2
    accuracy, _ = static_variant(config, data, config.data.max_length, half)
    records.append(
        {
            "dataset": dataset,
            "variant": f"layers-{half}",
            "test_accuracy": accuracy,
            "flops_speedup": size.num_layers / half,
        }
    )  # every layer costs the same on the same tokens
    return _stamped_and_printed(records, extra)


def _stamped_and_printed(records: list[dict], extra: list[str]) -> list[dict]:
    """``records``, each with the run's ``--set`` overrides, each printed on one line."""
    for record in records:
        record["overrides"] = extra
        print(
            f"{record['dataset']:16s} {record['variant']:12s} test accuracy {record['test_accuracy']:.4f}  "
            f"FLOPs x{record['flops_speedup']:.2f}",
            flush=True,
        )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["rotten_tomatoes", "bbc_titles", "bbc_news"],
        choices=["rotten_tomatoes", "bbc_titles", "bbc_news"],
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every data set, e.g. --set data.limit=600 (repeatable)",
    )
    parser.add_argument("--output", default=str(HERE / "results" / "untuned.json"))
    parser.add_argument(
        "--reuse-stage1",
        action="store_true",
        help="where runs/<name>/stage1.json exists (an earlier run of the same name and data), "
        "search again on its stage-1 checkpoints and saliency labels instead of retraining them",
    )
    parser.add_argument(
        "--adapler-only",
        action="store_true",
        help="run the pipeline (backbone and adapler rows) only and keep the data sets' static-alternative "
        "rows from the results file: they are fine-tuned from the preset's stage-1 settings alone, so a new "
        "search or selection rule does not change them",
    )
    args = parser.parse_args()
    output = Path(args.output)
    rerun = {"backbone", "adapler"} if args.adapler_only else None
    kept = [
        r
        for r in (json.loads(output.read_text()) if output.is_file() else [])
        if r["dataset"] not in args.datasets or (rerun is not None and r["variant"] not in rerun)
    ]
    records = kept + [
        r
        for dataset in args.datasets
        for r in bench_dataset(dataset, args.set, args.reuse_stage1, static=not args.adapler_only)
    ]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(records, indent=2, default=float) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
