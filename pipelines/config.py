"""Pipeline configuration: the method's ExperimentConfig plus Ray, Tune and MLflow sections.

Loaded like every config through ``adapler.config.load_config(preset, overrides, cls=PipelineConfig)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from adapler.config import ConfigError, ExperimentConfig
from adapler.operating_points import PointBudgets


@dataclass
class RayConfig:
    # None: inside `ray job submit` ($RAY_ADDRESS set) join the job's cluster, else start a private
    # local Ray; "auto" or "host:port": join that cluster.
    address: str | None = None
    # Ray Train workers (DDP); 1 on a laptop. stage1/stage2.batch_size stay the global batch:
    # each worker takes batch_size / num_workers rows per step (worker_batch_size).
    num_workers: int = 1
    # Where the workers go: PACK fills a node first; SPREAD puts them on different nodes.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    cpus_per_worker: int = 2  # torch threads per worker; 2 = this project's CI machines
    use_gpu: bool = False  # one GPU per Train worker, Tune trial and saliency actor when true
    # Checkpoints, Tune results and (for a URI) the saliency labels: a local path (one machine,
    # or a directory every node mounts) or s3:// gs:// URI (pipelines/storage.py).
    storage_path: str = "runs/ray"
    max_failures: int = 2  # a worker that dies is restarted from the last checkpoint this often
    saliency_actors: int = 1  # Ray Data actor pool size for the saliency labels
    # "package.module:function" called on every Train worker and trial with its training loader,
    # returning the loader to train on: fn(loader, *, config, stage, rank, world_size, start_epoch).
    # For drills and instrumentation (tests/pipelines/chaos.py fails a worker once); "" = none.
    loader_hook: str = ""


@dataclass
class TuneConfig:
    num_samples: int = 8  # trials; 0 = no search, one stage-2 run with the stage2 section as is
    max_concurrent: int = 1  # trials at once (each takes ray.cpus_per_worker CPUs)
    gamma_min: float = 5e-4  # search ranges from the spec, section 8 (log scale)
    gamma_max: float = 1e-2
    # phi in stage2.length_unit "input" (the spec's [1e-4, 1e-2] is in absolute tokens: that is
    # [0.003, 0.3] on 27-token reviews, [0.04, 4] on 420-token articles). The models that met
    # the presets' targets sat in [0.1, 2] for both (docs/how-it-works.md; recipe_sweep-*.json).
    phi_min: float = 0.1
    phi_max: float = 2.0
    # Input budgets to search (data.max_length of a trial): None = powers of two from 32 up to
    # data.max_length that cut some training text, and data.max_length itself
    # (adapler.batching.input_budgets); [] = not searched. A trial at budget T starts as its
    # stage2.init says (the stage-1 model, or the backbone) and learns on texts cut to T tokens,
    # with saliency labels computed at T, so plain truncation is a point of the search; every
    # speedup is against the backbone at data.max_length.
    max_lengths: list[int] | None = None
    lrs: list[float] = field(default_factory=lambda: [2e-5, 3e-5, 5e-5])
    inits: list[str] = field(default_factory=lambda: ["pretrained", "finetuned"])
    # CP and eta learning rates to search; [] = not searched (stage2.predictor_lr / eta_lr hold)
    predictor_lrs: list[float] = field(default_factory=list)
    eta_lrs: list[float] = field(default_factory=list)
    grace_period: int = 1  # epochs before the early-stopping scheduler may stop a trial
    # Calibration in the loop: each trial's best model also competes at every global eta factor
    # the paired rule certifies (pipelines/tune.py paired_selection); false: factor 1 only.
    calibrate: bool = True
    seed: int = 0


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir
    experiment: str = "adapler"
    # Where a new experiment keeps its artefacts (runs, registered models): "" = mlartifacts/
    # next to a SQLite store, else the tracking server's default; or e.g. s3://bucket/adapler/mlflow.
    artifact_location: str = ""
    registered_model: str = ""  # "" = "adapler-<run name>" (adapler.artifacts.registered_model_name)
    # When a run's new version becomes @champion (it always gets @challenger): "better" = at
    # least as accurate and as fast as the champion on the same test split; "always"; "never".
    promote: Literal["better", "always", "never"] = "better"
    # The registered version carries its ONNX Runtime graphs (adapler.onnx_export, under model/onnx/)
    # so that runtime "onnx" loads it without exporting: "" = no, "fp32", or "int8" (fp32 and int8).
    onnx_export: Literal["", "fp32", "int8"] = ""


@dataclass
class OperatingPointsConfig:
    enabled: bool = True
    budgets: PointBudgets = field(default_factory=PointBudgets)  # accurate / balanced / fast, dev accuracy


@dataclass
class PipelineConfig(ExperimentConfig):
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    # Operating points of the registered model (adapler.operating_points), measured on dev after
    # the selection; enabled=false skips them.
    operating_points: OperatingPointsConfig = field(default_factory=OperatingPointsConfig)

    def __post_init__(self) -> None:
        for count in ("num_workers", "saliency_actors", "cpus_per_worker"):
            if getattr(self.ray, count) < 1:
                raise ConfigError(f"ray.{count} must be at least 1, got {getattr(self.ray, count)}")
        if self.ray.loader_hook and not re.fullmatch(r"[\w.]+:\w+", self.ray.loader_hook):
            raise ConfigError(f"ray.loader_hook must be 'package.module:function', got {self.ray.loader_hook!r}")
        for stage in ("stage1", "stage2"):
            worker_batch_size(getattr(self, stage).batch_size, self.ray.num_workers, f"{stage}.batch_size")


def worker_batch_size(global_batch: int, num_workers: int, key: str = "batch_size") -> int:
    """Rows per worker and step: ``batch_size`` is the global batch, split evenly across the
    data-parallel workers, so that adding workers never changes the recipe (steps per epoch,
    learning-rate schedule). ConfigError when it does not split."""
    if global_batch < 1 or global_batch % num_workers:
        raise ConfigError(
            f"{key}={global_batch} is the global batch and must split evenly across ray.num_workers="
            f"{num_workers}: use a multiple of {num_workers}, or another number of workers"
        )
    return global_batch // num_workers
