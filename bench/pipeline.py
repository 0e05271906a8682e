"""Pipeline benchmarks: the whole `adapler run` per data set, and the cost of running on Ray.

    python bench/pipeline.py --datasets rotten_tomatoes bbc_news          # full data: hours on 2 cores
    python bench/pipeline.py --datasets rotten_tomatoes --set data.limit=1000 --set tune.num_samples=2
    python bench/pipeline.py --ray-overhead --set data.limit=640          # Ray Train vs the plain loop
    python bench/pipeline.py --datasets rotten_tomatoes --reuse-stage1    # Tune again on the last stage 1

Updates bench/results/pipeline.json (one record per data set: dataset, backbone,
stage1_dev_accuracy, backbone_test_accuracy, adapler_test_accuracy, flops_speedup,
wall_seconds, plus the overrides used) and bench/results/ray_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adapler.batching import make_loader
from adapler.config import load_config, resolve_preset
from adapler.data import load_data
from adapler.recipe import new_model
from adapler.training import train_stage1
from adapler_pipelines.config import PipelineConfig

HERE = Path(__file__).resolve().parent


def ray_overhead(overrides: list[str], output: Path) -> dict:
    """The same one stage-1 epoch, plain loop vs TorchTrainer with 1 worker, both on this machine.

    Reports the loop's own epoch time in both (Ray's per-step cost: sampler, DDP wrapper,
    reporting) and the wall time of the whole call (plus Ray's start-up of controller and worker).
    """
    from adapler_pipelines.ray_local import init_ray
    from adapler_pipelines.train import fit_stage

    config = load_config(
        resolve_preset("rotten_tomatoes"),
        [*overrides, "stage1.epochs=1", "name=bench-overhead", f"output_dir={HERE / '.cache'}"],
        cls=PipelineConfig,
    )
    torch.set_num_threads(config.ray.cpus_per_worker)
    data = load_data(config)
    model = new_model(config, data)
    start = time.perf_counter()
    train = make_loader(data.train, model.tokenizer, config.stage1.batch_size, config.data.max_length, shuffle=True)
    dev = make_loader(data.dev, model.tokenizer, config.stage1.batch_size, config.data.max_length)
    plain = train_stage1(model, train, dev, config.stage1, progress=False).history[0]
    plain_wall = time.perf_counter() - start

    init_ray(config.ray.address)
    start = time.perf_counter()
    ray_epoch = fit_stage(config, "stage1", f"bench-overhead-{int(time.time())}")[0].metrics
    ray_wall = time.perf_counter() - start
    record = {
        "train_examples": len(data.train),
        "plain_epoch_seconds": plain["train_seconds"],
        "ray_epoch_seconds": ray_epoch["train_seconds"],
        "epoch_overhead": ray_epoch["train_seconds"] / plain["train_seconds"] - 1,
        "plain_wall_seconds": plain_wall,
        "ray_wall_seconds": ray_wall,
        "wall_overhead": ray_wall / plain_wall - 1,
        "overrides": overrides,
    }
    print(json.dumps(record, indent=2))
    output.write_text(json.dumps(record, indent=2))
    return record


def pipeline_runs(datasets: list[str], overrides: list[str], output: Path, reuse_stage1: bool = False) -> list[dict]:
    """Runs each data set in turn; its record replaces that data set's record in `output` (the
    records of data sets not run here are kept). reuse_stage1: `adapler tune` instead of `adapler
    run`, on the stage-1 outcome (checkpoints and saliency) of an earlier run of the same name
    where there is one (stage 1 is trained otherwise)."""
    from adapler_pipelines.run import earlier_stage1, run_pipeline

    kept = json.loads(output.read_text()) if output.is_file() else []
    records = [r for r in kept if r["dataset"] not in datasets]
    for dataset in datasets:
        config = load_config(resolve_preset(dataset), [*overrides, f"name=bench-{dataset}"], cls=PipelineConfig)
        stage1_from = earlier_stage1(config) if reuse_stage1 else None
        summary = run_pipeline(config, stage1_only_from=stage1_from)
        print(summary.table())
        records.append(
            {
                "dataset": dataset,
                "backbone": summary.backbone,
                "stage1_dev_accuracy": summary.stage1_dev_accuracy,
                "backbone_test_accuracy": summary.backbone_test_accuracy,
                "adapler_test_accuracy": summary.adapler_test_accuracy,
                "flops_speedup": summary.flops_speedup,
                "backbone_examples_per_s": summary.backbone_examples_per_s,
                "adapler_examples_per_s": summary.adapler_examples_per_s,
                "wall_seconds": summary.wall_seconds,
                "overrides": overrides,
                "stage1_reused": stage1_from is not None,  # True: wall_seconds covers stage 2 and registration only
            }
        )
        output.write_text(json.dumps(records, indent=2))
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["rotten_tomatoes", "bbc_news"])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ray-overhead", action="store_true", help="only the Ray Train vs plain loop comparison")
    parser.add_argument(
        "--reuse-stage1",
        action="store_true",
        help="stage 2 search and registration only, on an earlier run's stage 1 (same --set name/output_dir); "
        "without one, stage 1 is trained",
    )
    args = parser.parse_args()
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    if args.ray_overhead:
        ray_overhead(args.set, results / "ray_overhead.json")
    else:
        pipeline_runs(args.datasets, args.set, results / "pipeline.json", args.reuse_stage1)


if __name__ == "__main__":
    main()
