"""Pipeline configuration: the method's ExperimentConfig plus Ray, Tune and MLflow sections.

Loaded like every config through ``adapler.config.load_config(preset, overrides, cls=PipelineConfig)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from adapler.config import ExperimentConfig


@dataclass
class RayConfig:
    # None: inside `ray job submit` ($RAY_ADDRESS set) join the job's cluster, else start a private
    # local Ray; "auto" or "host:port": join that cluster.
    address: str | None = None
    num_workers: int = 1  # Ray Train workers (DDP); 1 on a laptop
    cpus_per_worker: int = 2  # torch threads per worker; 2 = this project's CI machines
    use_gpu: bool = False  # one GPU per worker when true
    storage_path: str = "runs/ray"  # checkpoints and results: a local path or s3:// gs:// URI
    max_failures: int = 2  # a worker that dies is restarted from the last checkpoint this often
    saliency_actors: int = 1  # Ray Data actor pool size for the saliency labels
    fail_once_at_step: int = -1  # chaos drill: a worker raises once at this global step (-1: never)


@dataclass
class TuneConfig:
    num_samples: int = 8  # trials; 0 = no search, one stage-2 run with the stage2 section as is
    max_concurrent: int = 1  # trials at once (each takes ray.cpus_per_worker CPUs)
    gamma_min: float = 5e-4  # search ranges from the spec, section 8 (log scale)
    gamma_max: float = 1e-2
    phi_min: float = 1e-4
    phi_max: float = 1e-2
    lrs: list[float] = field(default_factory=lambda: [2e-5, 3e-5, 5e-5])
    inits: list[str] = field(default_factory=lambda: ["pretrained", "finetuned"])
    # CP and eta learning rates to search; [] = not searched (stage2.predictor_lr / eta_lr hold)
    predictor_lrs: list[float] = field(default_factory=list)
    eta_lrs: list[float] = field(default_factory=list)
    grace_period: int = 1  # epochs before the early-stopping scheduler may stop a trial
    # Calibration in the loop: the front's models within tolerance also compete at the fastest global
    # eta factor that keeps them within it (pipelines/tune.py calibrate_front).
    calibrate: bool = True
    seed: int = 0


@dataclass
class MlflowConfig:
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working dir
    experiment: str = "adapler"
    registered_model: str = ""  # "" = "adapler-<run name>" (adapler.artifacts.registered_model_name)
    # When a run's new version becomes @champion (it always gets @challenger): "better" = at
    # least as accurate and as fast as the champion on the same test split; "always"; "never".
    promote: Literal["better", "always", "never"] = "better"


@dataclass
class PipelineConfig(ExperimentConfig):
    ray: RayConfig = field(default_factory=RayConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
