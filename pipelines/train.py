"""Stage 1 and stage 2 on Ray Train: the loops of adapler.training, run per worker.

This file adds only the Ray context: the worker's rank and device, its share of the rows (its
slice of each global training batch of adapler.batching.LengthGroupedBatches, ``batch_size /
num_workers`` rows per step, so that ``batch_size`` stays the global batch; every
num_workers-th dev row), DDP (``prepare_model``), a checkpoint (written by rank 0 alone) + dev
metrics of the whole dev split reported per epoch, and resuming from the last checkpoint when a
worker fails (``FailureConfig``). Checkpoints stay where Ray stored them (``ray.storage_path``,
local or a URI): :class:`EpochCheckpoint` names their location, which any node can read
(pipelines/storage.py).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapler.batching import make_loader
from adapler.config import config_from_dict, config_to_dict
from adapler.data import load_data
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.recipe import new_model
from adapler.run_layout import CHECKPOINT_MODEL_SUBDIR
from adapler.training import EpochReport, train_stage1, train_stage2
from adapler_pipelines.config import PipelineConfig, worker_batch_size
from adapler_pipelines.storage import local_copy, location_of

STATE_FILE = "state.json"  # inside every checkpoint: epoch and metrics
WORKER_NODES = "worker_nodes"  # reported to Ray with each epoch: the Ray node id of each worker, by rank

Reporter = Callable[[dict, "str | None"], None]  # (metrics, checkpoint dir or None)


@dataclass
class EpochCheckpoint:
    path: str  # location (local dir or URI) holding CHECKPOINT_MODEL_SUBDIR and STATE_FILE
    epoch: int
    metrics: dict
    nodes: list[str] = field(default_factory=list)  # the Ray node id of each worker, by rank


def storage_path(config: PipelineConfig) -> str:
    """Ray wants an absolute local path (or a URI such as s3://bucket/prefix)."""
    path = config.ray.storage_path
    return path if "://" in path else str(Path(path).resolve())


def loader_hook(spec: str) -> Callable:
    """The function ``ray.loader_hook`` names ("package.module:function"), imported on the worker."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def run_stage(
    config: PipelineConfig,
    stage: str,
    report: Reporter,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    resume_dir: str | None = None,
    init_dir: str | None = None,
    saliency_path: str | None = None,
    reference_dev_score: float = 0.0,
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
) -> None:
    """One worker's share of a stage: the same loop whether Ray Train or Ray Tune calls it.

    resume_dir: a local checkpoint to continue from (its epoch + 1); init_dir: stage 2's
    starting weights when they are the fine-tuned ones; saliency_path: stage 2's labels
    (parquet); both locations (local or URI). device: None = cuda with ray.use_gpu, else
    config.device.
    """
    from adapler_pipelines.saliency import load_saliency

    data = load_data(config)
    stage_config = config.stage1 if stage == "stage1" else config.stage2
    torch.manual_seed(stage_config.seed)  # a new head and CPs start alike whatever the number of workers
    start_epoch = 0
    if resume_dir:
        model = AdapLeRForSequenceClassification.from_pretrained(Path(resume_dir) / CHECKPOINT_MODEL_SUBDIR)
        start_epoch = json.loads((Path(resume_dir) / STATE_FILE).read_text())["epoch"] + 1
    elif init_dir:
        model = AdapLeRForSequenceClassification.from_pretrained(local_copy(init_dir))
        model.tokenizer.model_max_length = config.data.max_length  # a trial's input budget, saved with it
    else:
        model = new_model(config, data)
    model = model.to(device or ("cuda" if config.ray.use_gpu else config.device))
    tokenizer, max_length = model.tokenizer, config.data.max_length
    batch_size = worker_batch_size(stage_config.batch_size, world_size, f"{stage}.batch_size")
    saliency = None
    if stage == "stage2":
        saliency = load_saliency(saliency_path, data.train, tokenizer, max_length)
    train_loader = make_loader(
        data.train,
        tokenizer,
        batch_size,
        max_length,
        shuffle=True,
        seed=stage_config.seed,
        saliency=saliency,
        replicas=world_size,
        rank=rank,
    )
    if config.ray.loader_hook:
        train_loader = loader_hook(config.ray.loader_hook)(
            train_loader, config=config, stage=stage, rank=rank, world_size=world_size, start_epoch=start_epoch
        )
    # every world_size-th dev row: the workers' shares, joined by the loop, are the dev split once
    dev_loader = make_loader(data.dev.iloc[rank::world_size], tokenizer, batch_size, max_length)
    model = wrap_model(model)

    def on_epoch(epoch_report: EpochReport) -> None:
        metrics = {**epoch_report.metrics, "epoch": epoch_report.epoch}
        if rank != 0:  # every worker must report (a barrier); only rank 0 writes a checkpoint
            report(metrics, None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            core = getattr(epoch_report.model, "module", epoch_report.model)
            core.save_pretrained(Path(tmp) / CHECKPOINT_MODEL_SUBDIR)
            (Path(tmp) / STATE_FILE).write_text(json.dumps(metrics))
            report(metrics, tmp)

    progress = rank == 0
    if stage == "stage1":
        train_stage1(model, train_loader, dev_loader, config.stage1, on_epoch, progress, start_epoch)
    else:
        train_stage2(
            model, train_loader, dev_loader, config.stage2, reference_dev_score, on_epoch, progress, start_epoch
        )


def stage_worker(loop_config: dict) -> None:
    """train_loop_per_worker of the TorchTrainer."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    config = config_from_dict(loop_config["config"], PipelineConfig)
    torch.set_num_threads(config.ray.cpus_per_worker)
    context = ray.train.get_context()
    checkpoint = ray.train.get_checkpoint()
    nodes = [ray.get_runtime_context().get_node_id()]
    if context.get_world_size() > 1:
        nodes = [None] * context.get_world_size()
        torch.distributed.all_gather_object(nodes, ray.get_runtime_context().get_node_id())

    def report(metrics: dict, directory: str | None) -> None:
        ray.train.report(
            {**metrics, WORKER_NODES: nodes}, checkpoint=Checkpoint.from_directory(directory) if directory else None
        )

    def wrap(model: torch.nn.Module) -> torch.nn.Module:
        # Stage 1 never runs the CPs: DDP must not wait for their gradients.
        unused = loop_config["stage"] == "stage1"
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": unused})

    def run(resume_dir: str | None) -> None:
        run_stage(
            config,
            loop_config["stage"],
            report,
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),
            resume_dir=resume_dir,
            init_dir=loop_config.get("init_dir"),
            saliency_path=loop_config.get("saliency_path"),
            reference_dev_score=loop_config.get("reference_dev_score", 0.0),
            wrap_model=wrap,
        )

    if checkpoint is None:
        run(None)
    else:
        with checkpoint.as_directory() as directory:
            run(directory)


def fit_stage(config: PipelineConfig, stage: str, run_name: str, **extra) -> list[EpochCheckpoint]:
    """Run a stage on Ray Train; returns every epoch's checkpoint (its location in
    ``ray.storage_path``, under ``<run_name>-<digest of the config>``) with its metrics, and
    prints the nodes its workers ran on."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    loop_config = {"config": config_to_dict(config), "stage": stage, **extra}
    # Ray Train resumes a run from the checkpoints it finds under storage_path/<name>: the name
    # carries a digest of everything the run trains on, so that the same run resumes (a restarted
    # job) and a run with another config or data never starts from an earlier one's weights.
    digest = hashlib.sha256(json.dumps(loop_config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    trainer = TorchTrainer(
        stage_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=config.ray.num_workers,
            use_gpu=config.ray.use_gpu,
            resources_per_worker={"CPU": config.ray.cpus_per_worker},
            placement_strategy=config.ray.placement_strategy,
        ),
        run_config=RunConfig(
            name=f"{run_name}-{digest}",
            storage_path=storage_path(config),
            failure_config=FailureConfig(max_failures=config.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"{stage} failed on Ray Train: {result.error}")
    checkpoints = sorted(
        (
            EpochCheckpoint(
                location_of(checkpoint.path, checkpoint.filesystem),
                int(metrics["epoch"]),
                {k: v for k, v in metrics.items() if k != WORKER_NODES},
                list(metrics.get(WORKER_NODES, [])),
            )
            for checkpoint, metrics in (result.best_checkpoints or [])
        ),
        key=lambda c: c.epoch,
    )
    if checkpoints:
        print(f"      {stage} on {describe_nodes(checkpoints[-1].nodes)}", flush=True)
    return checkpoints


def describe_nodes(nodes: list[str]) -> str:
    """'2 worker(s) on 2 node(s): rank 0 on node 1f0e9a2c, rank 1 on node 77ab30d1' (node ids
    shortened as the Ray dashboard and `ray list nodes` show them)."""
    ranks = ", ".join(f"rank {rank} on node {node[:8]}" for rank, node in enumerate(nodes))
    return f"{len(nodes)} worker(s) on {len(set(nodes))} node(s): {ranks}"
