"""Stage 2 search on Ray Tune: gamma, phi (log scale), learning rate and the starting weights.

Multi-objective (dev accuracy up, FLOPs speedup up) with Optuna; ASHA stops trials early on a
single scalar that encodes the spec's rule (see :func:`objective`). Every trial shares the stage-1
checkpoints and the saliency labels, computed once before the search. The outcome is the
Pareto front over all (trial, epoch) points and the point the spec's rule picks: the best
speedup with dev accuracy within ``selection_tolerance`` of stage 1.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapler.config import config_from_dict, config_to_dict
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.train import MODEL_SUBDIR, run_stage, storage_path


@dataclass
class TrialPoint:
    trial: str
    epoch: int
    dev_accuracy: float
    dev_flops_speedup: float
    gamma: float
    phi: float
    lr: float
    init: str
    checkpoint: str  # local directory; the model is in <checkpoint>/model

    @property
    def model_dir(self) -> str:
        return str(Path(self.checkpoint) / MODEL_SUBDIR)


@dataclass
class SearchOutcome:
    points: list[TrialPoint]
    pareto: list[TrialPoint]
    chosen: TrialPoint
    chosen_eligible: bool  # False: no point was within tolerance; the most accurate was taken


def objective(metrics: dict, reference: float, tolerance: float) -> float:
    """One number for the early-stopping scheduler: the speedup while the accuracy is within
    tolerance of stage 1, otherwise a penalty below any speedup (>= 1) that grows with the gap."""
    gap = reference - tolerance - metrics["dev_accuracy"]
    return metrics["dev_flops_speedup"] if gap <= 0 else -gap


def pareto_front(points: list[TrialPoint]) -> list[TrialPoint]:
    """Points no other point beats on both dev accuracy and speedup (ties kept)."""

    def dominated(p: TrialPoint) -> bool:
        return any(
            q.dev_accuracy >= p.dev_accuracy and q.dev_flops_speedup >= p.dev_flops_speedup
            and (q.dev_accuracy > p.dev_accuracy or q.dev_flops_speedup > p.dev_flops_speedup)
            for q in points
        )

    return sorted((p for p in points if not dominated(p)), key=lambda p: p.dev_flops_speedup)


def choose(points: list[TrialPoint], reference: float, tolerance: float) -> tuple[TrialPoint, bool]:
    eligible = [p for p in points if p.dev_accuracy >= reference - tolerance]
    if eligible:
        return max(eligible, key=lambda p: (p.dev_flops_speedup, p.dev_accuracy)), True
    return max(points, key=lambda p: p.dev_accuracy), False


def with_trial_params(config: PipelineConfig, gamma: float, phi: float, lr: float, init: str) -> PipelineConfig:
    """A copy of config with one trial's sampled stage-2 hyperparameters (the searched ones)."""
    config = copy.deepcopy(config)
    config.stage2.gamma, config.stage2.phi, config.stage2.lr, config.stage2.init = gamma, phi, lr, init
    return config


def stage2_trial(params: dict, base: dict, stage1_dir: str, saliency_path: str, reference: float) -> None:
    """A Tune function trainable: one stage-2 run with the sampled hyperparameters."""
    from ray import tune
    from ray.tune import Checkpoint

    config = with_trial_params(config_from_dict(base, PipelineConfig), **params)
    torch.set_num_threads(config.ray.cpus_per_worker)
    tolerance = config.stage2.selection_tolerance

    def report(metrics: dict, directory: str | None) -> None:
        metrics = {**metrics, "objective": objective(metrics, reference, tolerance)}
        tune.report(metrics, checkpoint=Checkpoint.from_directory(directory) if directory else None)

    checkpoint = tune.get_checkpoint()
    init_dir = stage1_dir if config.stage2.init == "finetuned" else None
    if checkpoint is None:
        run_stage(config, "stage2", report, init_dir=init_dir, saliency_path=saliency_path, reference_dev_score=reference)
    else:
        with checkpoint.as_directory() as directory:
            run_stage(config, "stage2", report, resume_dir=directory, saliency_path=saliency_path,
                      reference_dev_score=reference)


def search(config: PipelineConfig, stage1_dir: str, saliency_path: str, reference: float, run_name: str) -> SearchOutcome:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t = config.tune
    param_space = {
        "gamma": tune.loguniform(t.gamma_min, t.gamma_max),
        "phi": tune.loguniform(t.phi_min, t.phi_max),
        "lr": tune.choice(t.lrs),
        "init": tune.choice(t.inits),
    }
    trainable = tune.with_resources(
        tune.with_parameters(
            stage2_trial, base=config_to_dict(config), stage1_dir=stage1_dir,
            saliency_path=saliency_path, reference=reference,
        ),
        {"cpu": config.ray.cpus_per_worker, "gpu": 1 if config.ray.use_gpu else 0},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric=["dev_accuracy", "dev_flops_speedup"], mode=["max", "max"], seed=t.seed),
            scheduler=ASHAScheduler(
                metric="objective", mode="max", time_attr="training_iteration",
                grace_period=t.grace_period, max_t=config.stage2.epochs,
            ),
            num_samples=t.num_samples,
            max_concurrent_trials=t.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=run_name, storage_path=storage_path(config),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )
    grid = tuner.fit()
    points = []
    for result in grid:
        if result.error:
            raise RuntimeError(f"a Tune trial failed: {result.error}")
        for checkpoint, metrics in result.best_checkpoints or []:
            cfg = result.config
            points.append(TrialPoint(
                trial=str(metrics.get("trial_id", Path(result.path).name)), epoch=int(metrics["epoch"]),
                dev_accuracy=metrics["dev_accuracy"], dev_flops_speedup=metrics["dev_flops_speedup"],
                gamma=cfg["gamma"], phi=cfg["phi"], lr=cfg["lr"], init=cfg["init"], checkpoint=checkpoint.path,
            ))
    if not points:
        raise RuntimeError("the search finished without a single reported epoch")
    chosen, eligible = choose(points, reference, config.stage2.selection_tolerance)
    return SearchOutcome(points, pareto_front(points), chosen, eligible)


def write_pareto(outcome: SearchOutcome, directory: Path, reference: float) -> dict[str, Path]:
    """pareto.csv (all points, front flagged) and pareto.png (speedup vs dev accuracy)."""
    import pandas as pd

    from adapler.pictures import pareto_plot

    directory.mkdir(parents=True, exist_ok=True)
    front = {(p.trial, p.epoch) for p in outcome.pareto}
    table = pd.DataFrame([{**asdict(p), "pareto": (p.trial, p.epoch) in front,
                           "chosen": p is outcome.chosen} for p in outcome.points])
    table.to_csv(directory / "pareto.csv", index=False)
    pareto_plot(
        [(p.dev_flops_speedup, p.dev_accuracy) for p in outcome.points],
        [(p.dev_flops_speedup, p.dev_accuracy) for p in outcome.pareto],
        (outcome.chosen.dev_flops_speedup, outcome.chosen.dev_accuracy),
        directory / "pareto.png", reference=reference,
    )
    return {"pareto.csv": directory / "pareto.csv", "pareto.png": directory / "pareto.png"}
