"""Scale-out on one machine: what going distributed costs, on a Ray cluster of two nodes.

    flock /tmp/adapler_bench.lock .venv/bin/python bench/scale.py      # ~5 min on 2 cores
    .venv/bin/python bench/scale.py --set data.limit=40 --output /tmp/scale-smoke.json   # a smoke run

Starts two Ray nodes on this machine (tests/local_cluster.py, the scale-out tests' helper:
`ray start --head` and `ray start --address`), each declaring --cpus-per-node CPUs (1: one core
of the two per node),
with the demo preset's settings on a Rotten Tomatoes slice (data.limit=300, max_length 64), one
setting after the other in the same run:

- stage 1, one epoch, 1 vs 2 Ray Train workers (SPREAD: one per node), the same global batch
  (stage1.batch_size=32: 16 rows per worker and step with 2): examples/s of the training loop
  (rank 0's epoch time), and the wall time of the whole call (Ray Train's start-up included);
- saliency labels of that stage-1 model, 1 vs 2 Ray Data actors: rows/s over the whole call
  (actor start-up and model loading included);
- a Ray Tune search of 2 stage-2 trials (1 epoch each, the same sampled values in both),
  tune.max_concurrent 1 vs 2: its wall time.

Writes --output (bench/results/scale.json): one record per measurement (Measurement). The
projection to a cluster of N nodes is in the README (Benchmarks: Scale-out on one machine).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mlflow

from adapler.config import load_config, resolve_preset
from adapler.data import load_data
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.run_layout import CHECKPOINT_MODEL_SUBDIR
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.run import absolute_paths
from adapler_pipelines.saliency import compute_saliency
from adapler_pipelines.storage import join
from adapler_pipelines.tracking import setup_mlflow
from adapler_pipelines.train import fit_stage
from adapler_pipelines.tune import search

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the scale-out tests' cluster helper, not part of the product
from local_cluster import local_cluster  # noqa: E402

# The benchmark's recipe: the demo preset, smaller (stage 1 and each trial one epoch, 1 CPU per
# worker, trial and actor), then the caller's --set.
BENCH_OVERRIDES = [
    "data.source=rotten_tomatoes",
    "data.max_length=64",
    "data.limit=300",
    "stage1.epochs=1",
    "stage2.epochs=1",
    "tune.num_samples=2",
    "ray.cpus_per_worker=1",
    "ray.placement_strategy=SPREAD",
    "name=bench-scale",
]
SETTINGS = (1, 2)  # workers, actors, concurrent trials


@dataclass
class Measurement:
    what: str  # "stage1", "saliency" or "tune"
    setting: str  # e.g. "2 workers"
    seconds: float  # stage1: the training loop of the epoch (rank 0); saliency, tune: the whole call
    rate: float  # count / seconds
    unit: str
    count: int  # training examples, rows labelled, trials
    wall_seconds: float  # the whole call, start-up of Ray's workers / actors / trials included
    details: dict = field(default_factory=dict)


def stage1(config: PipelineConfig, workers: int, train_rows: int) -> tuple[Measurement, str]:
    """One stage-1 epoch on ``workers`` Train workers; the measurement and the epoch's model location."""
    config.ray.num_workers = workers
    start = time.perf_counter()
    epoch = fit_stage(config, "stage1", f"bench-scale-stage1-{workers}w-{int(time.time())}")[-1]
    wall = time.perf_counter() - start
    seconds = epoch.metrics["train_seconds"]
    steps = math.ceil(train_rows / config.stage1.batch_size)
    details = {
        "global_batch": config.stage1.batch_size,
        "steps": steps,
        "step_seconds": seconds / steps,
        "nodes": len(set(epoch.nodes)),
        "dev_accuracy": epoch.metrics["dev_accuracy"],
    }
    setting = f"{workers} worker{'s' if workers > 1 else ''}"
    return Measurement("stage1", setting, seconds, train_rows / seconds, "examples/s", train_rows, wall, details), join(
        epoch.path, CHECKPOINT_MODEL_SUBDIR
    )


def saliency(config: PipelineConfig, actors: int, rows, model_dir: str, output: Path) -> tuple[Measurement, str]:
    start = time.perf_counter()
    path = compute_saliency(
        rows,
        [model_dir],
        config.data.max_length,
        output / f"saliency-{actors}",
        num_actors=actors,
        cpus_per_actor=config.ray.cpus_per_worker,
    )
    seconds = time.perf_counter() - start
    setting = f"{actors} actor{'s' if actors > 1 else ''}"
    return Measurement("saliency", setting, seconds, len(rows) / seconds, "rows/s", len(rows), seconds), path


def tune_search(
    config: PipelineConfig, concurrent: int, model_dir: str, saliency_path: str, reference: float, parent_run_id: str
) -> Measurement:
    config.tune.max_concurrent = concurrent
    start = time.perf_counter()
    outcome = search(
        config, model_dir, saliency_path, reference, f"bench-scale-tune-{concurrent}-{int(time.time())}", parent_run_id
    )
    seconds = time.perf_counter() - start
    trials = config.tune.num_samples
    return Measurement(
        "tune",
        f"max_concurrent {concurrent}",
        seconds,
        trials / seconds * 60,
        "trials/min",
        trials,
        seconds,
        {"stage2_epochs": config.stage2.epochs, "candidates": len(outcome.candidates)},
    )


def gradient_megabytes(model_dir: str) -> float:
    """MB of fp32 gradients that DDP all-reduces per step: one per trainable parameter of the
    model (its buckets hold them all, the CPs' too, unused in stage 1)."""
    model = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    return sum(p.numel() for p in model.parameters() if p.requires_grad) * 4 / 1e6


def run(overrides: list[str], cpus_per_node: int, output: Path) -> list[Measurement]:
    with tempfile.TemporaryDirectory(prefix="adapler-scale-") as tmp:
        work = Path(tmp)
        config = absolute_paths(
            load_config(
                resolve_preset("demo"),
                [
                    *BENCH_OVERRIDES,
                    f"output_dir={work / 'runs'}",
                    f"ray.storage_path={work / 'ray'}",
                    f"mlflow.tracking_uri=sqlite:///{work / 'mlflow.db'}",
                    *overrides,
                ],
                cls=PipelineConfig,
            )
        )
        data = load_data(config)
        measurements: list[Measurement] = []
        start = time.perf_counter()
        with local_cluster(nodes=2, cpus_per_node=cpus_per_node) as cluster:
            print(
                f"cluster of {len(cluster.node_ids)} nodes, {cpus_per_node} CPU(s) each, up in "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
            model_dir = ""
            for workers in SETTINGS:
                measurement, model = stage1(config, workers, len(data.train))
                measurements.append(measurement)
                model_dir = model_dir or model  # the 1-worker model: the input of what follows
            reference = measurements[0].details["dev_accuracy"]
            paths = []
            for actors in SETTINGS:
                measurement, path = saliency(config, actors, data.train, model_dir, work)
                measurements.append(measurement)
                paths.append(path)
            setup_mlflow(config.mlflow)
            with mlflow.start_run(run_name="bench-scale") as parent:
                for concurrent in SETTINGS:
                    measurements.append(
                        tune_search(config, concurrent, model_dir, paths[0], reference, parent.info.run_id)
                    )
        gradients = gradient_megabytes(model_dir)
    for m in measurements:
        m.details.update(cpus_per_node=cpus_per_node, overrides=overrides)
        if m.what == "stage1":
            m.details["gradient_mb_per_step"] = gradients
    output.write_text(json.dumps([asdict(m) for m in measurements], indent=2) + "\n")
    return measurements


def report(measurements: list[Measurement]) -> str:
    """The table, each second setting against the first of its kind, and stage 1's cost per step of
    going distributed (the 2-worker step against half the 1-worker step)."""
    lines = [f"{'what':<10}{'setting':<18}{'seconds':>9}{'rate':>10}  {'unit':<12}{'wall s':>8}{'vs first':>10}"]
    first: dict[str, Measurement] = {}
    for m in measurements:
        base = first.setdefault(m.what, m)
        lines.append(
            f"{m.what:<10}{m.setting:<18}{m.seconds:>9.1f}{m.rate:>10.2f}  {m.unit:<12}{m.wall_seconds:>8.1f}"
            f"{m.rate / base.rate:>9.2f}x"
        )
    one, two = (m for m in measurements if m.what == "stage1")
    ideal = one.details["step_seconds"] / 2
    extra = two.details["step_seconds"] - ideal
    lines.append(
        f"stage 1 per step: 1 worker {one.details['step_seconds']:.3f} s, "
        f"2 workers {two.details['step_seconds']:.3f} s "
        f"(perfect scaling {ideal:.3f} s; {extra:+.3f} s per step for going distributed, "
        f"{one.details['gradient_mb_per_step']:.1f} MB of gradients all-reduced)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config overrides on top of the benchmark's (e.g. data.limit=40 for a smoke run)",
    )
    parser.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each of the two Ray nodes declares")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "scale.json")
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    measurements = run(args.set, args.cpus_per_node, args.output)
    print(report(measurements))
    print(f"{time.perf_counter() - start:.0f} s in all; written to {args.output}")


if __name__ == "__main__":
    main()
