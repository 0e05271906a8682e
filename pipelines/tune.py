"""Stage 2 search on Ray Tune: sampled values are dotted config keys, applied like ``--set``.

The search space is :data:`SEARCHED`: one line per searched config key, its sampler and the
``tune`` fields that bound it. A trial applies its sampled values to the config with
:func:`adapler.config.apply_overrides` (the ``--set`` code), trains with the real config it
gets, and logs its own MLflow run from inside (params = that config, one step per epoch).
Multi-objective (dev accuracy up, FLOPs speedup up) with Optuna; ASHA stops trials early on
:func:`adapler.selection.early_stopping_score`. Every trial shares the stage-1 checkpoints and
the saliency labels, computed once before the search. The outcome is every (trial, epoch)
candidate and the spec's selection over them (:mod:`adapler.selection`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapler.config import apply_overrides, config_from_dict, config_to_dict, get_dotted
from adapler.selection import Candidate, Selection, early_stopping_score, select
from adapler_pipelines.config import PipelineConfig, TuneConfig
from adapler_pipelines.tracking import StageRun, end_open_runs, tracking_uri
from adapler_pipelines.train import MODEL_SUBDIR, EpochCheckpoint, run_stage, storage_path

TRIAL_PREFIX = "stage2-"  # stage tag of a stage-2 trial's MLflow run: stage2-<trial id>

# searched config key -> (Ray Tune sampler, the TuneConfig fields that are its arguments)
SEARCHED: dict[str, tuple[str, tuple[str, ...]]] = {
    "stage2.gamma": ("loguniform", ("gamma_min", "gamma_max")),
    "stage2.phi": ("loguniform", ("phi_min", "phi_max")),
    "stage2.lr": ("choice", ("lrs",)),
    "stage2.init": ("choice", ("inits",)),
}


@dataclass
class SearchOutcome:
    candidates: list[Candidate]  # every (trial, epoch), in the search's order
    selection: Selection


def param_space(tune_config: TuneConfig) -> dict:
    from ray import tune

    samplers = {"loguniform": tune.loguniform, "choice": tune.choice}
    return {
        key: samplers[sampler](*(getattr(tune_config, name) for name in fields))
        for key, (sampler, fields) in SEARCHED.items()
    }


def searched_values(config: PipelineConfig) -> dict:
    """The searched keys' values in ``config``: the params of a run that did not search."""
    return {key: get_dotted(config, key) for key in SEARCHED}


def stage2_trial(sampled: dict, base: dict, stage1_dir: str, saliency_path: str, reference: float,
                 parent_run_id: str) -> None:
    """A Tune function trainable: one stage-2 run with the sampled config keys."""
    from ray import tune
    from ray.tune import Checkpoint

    config = apply_overrides(config_from_dict(base, PipelineConfig), sampled)
    torch.set_num_threads(config.ray.cpus_per_worker)
    tolerance = config.stage2.selection_tolerance
    trial = tune.get_context().get_trial_id()
    with StageRun(config, f"{TRIAL_PREFIX}{trial}", parent_run_id) as run:

        def report(metrics: dict, directory: str | None) -> None:
            run.log_epoch(metrics, metrics["epoch"])  # before tune.report: a stopped trial does not return
            score = early_stopping_score(metrics["dev_accuracy"], metrics["dev_flops_speedup"], reference, tolerance)
            tune.report({**metrics, "objective": score},
                        checkpoint=Checkpoint.from_directory(directory) if directory else None)

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            init_dir = stage1_dir if config.stage2.init == "finetuned" else None
            run_stage(config, "stage2", report, init_dir=init_dir, saliency_path=saliency_path,
                      reference_dev_score=reference)
        else:
            with checkpoint.as_directory() as directory:
                run_stage(config, "stage2", report, resume_dir=directory, saliency_path=saliency_path,
                          reference_dev_score=reference)


def search(config: PipelineConfig, stage1_dir: str, saliency_path: str, reference: float, run_name: str,
           parent_run_id: str) -> SearchOutcome:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t = config.tune
    trainable = tune.with_resources(
        tune.with_parameters(
            stage2_trial, base=config_to_dict(config), stage1_dir=stage1_dir,
            saliency_path=saliency_path, reference=reference, parent_run_id=parent_run_id,
        ),
        {"cpu": config.ray.cpus_per_worker, "gpu": 1 if config.ray.use_gpu else 0},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(t),
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
    try:
        grid = tuner.fit()
    finally:
        end_open_runs(tracking_uri(config.mlflow), parent_run_id)  # trials ASHA stopped
    candidates = []
    for result in grid:
        if result.error:
            raise RuntimeError(f"a Tune trial failed: {result.error}")
        for checkpoint, metrics in result.best_checkpoints or []:
            candidates.append(Candidate(
                trial=str(metrics.get("trial_id", Path(result.path).name)), epoch=int(metrics["epoch"]),
                dev_accuracy=metrics["dev_accuracy"], dev_flops_speedup=metrics["dev_flops_speedup"],
                params=dict(result.config), model_dir=str(Path(checkpoint.path) / MODEL_SUBDIR),
            ))
    if not candidates:
        raise RuntimeError("the search finished without a single reported epoch")
    return SearchOutcome(candidates, select(candidates, reference, config.stage2.selection_tolerance))


def without_search(config: PipelineConfig, epochs: list[EpochCheckpoint], reference: float) -> SearchOutcome:
    """The outcome of one stage-2 run on Ray Train (``tune.num_samples=0``)."""
    params = searched_values(config)
    candidates = [
        Candidate("stage2", c.epoch, c.metrics["dev_accuracy"], c.metrics["dev_flops_speedup"], params,
                  str(Path(c.path) / MODEL_SUBDIR))
        for c in epochs
    ]
    return SearchOutcome(candidates, select(candidates, reference, config.stage2.selection_tolerance))


def write_pareto(candidates: list[Candidate], selection: Selection, directory: Path, reference: float) -> dict[str, Path]:
    """pareto.csv (all candidates, front and chosen flagged, one column per param) and pareto.png
    (speedup vs dev accuracy)."""
    import pandas as pd

    from adapler.pictures import pareto_plot

    directory.mkdir(parents=True, exist_ok=True)
    front = {(p.trial, p.epoch) for p in selection.front}
    chosen = selection.chosen
    rows = []
    for c in candidates:
        row = {k: v for k, v in asdict(c).items() if k != "params"}
        rows.append({**row, **c.params, "pareto": (c.trial, c.epoch) in front,
                     "chosen": (c.trial, c.epoch) == (chosen.trial, chosen.epoch)})
    pd.DataFrame(rows).to_csv(directory / "pareto.csv", index=False)
    pareto_plot(
        [(p.dev_flops_speedup, p.dev_accuracy) for p in candidates],
        [(p.dev_flops_speedup, p.dev_accuracy) for p in selection.front],
        (chosen.dev_flops_speedup, chosen.dev_accuracy),
        directory / "pareto.png", reference=reference,
    )
    return {"pareto.csv": directory / "pareto.csv", "pareto.png": directory / "pareto.png"}
