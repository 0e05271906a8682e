"""Stage 2 search on Ray Tune: sampled values are dotted config keys, applied like ``--set``.

The search space is :data:`SEARCHED`: one line per searched config key, its sampler and the
``tune`` fields that bound it. A trial applies its sampled values to the config with
:func:`adapler.config.apply_overrides` (the ``--set`` code), trains with the real config it
gets, and logs its own MLflow run from inside (params = that config, one step per epoch).
Multi-objective (dev accuracy up, FLOPs speedup up) with Optuna; ASHA stops trials early on
:func:`adapler.selection.early_stopping_score`. Every trial shares the stage-1 checkpoints and
the saliency labels, computed once before the search. After it, :func:`calibrate_front` scales
the etas of the front's eligible models on dev (calibration in the loop). The outcome is every
(trial, epoch, eta factor) candidate and the spec's selection over them (:mod:`adapler.selection`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapler.batching import make_loader
from adapler.calibration import calibrate
from adapler.config import apply_overrides, config_from_dict, config_to_dict, get_dotted
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.recipe import load_data
from adapler.selection import Candidate, Selection, early_stopping_score, select
from adapler_pipelines.config import PipelineConfig, TuneConfig
from adapler_pipelines.storage import join, local_copy, location_of
from adapler_pipelines.tracking import StageRun, end_open_runs, tracking_uri
from adapler_pipelines.train import MODEL_SUBDIR, EpochCheckpoint, run_stage, storage_path

TRIAL_PREFIX = "stage2-"  # stage tag of a stage-2 trial's MLflow run: stage2-<trial id>

# searched config key -> (Ray Tune sampler, the TuneConfig fields that are its arguments). A
# choice over an empty list is not searched: the stage2 section's value holds.
SEARCHED: dict[str, tuple[str, tuple[str, ...]]] = {
    "stage2.gamma": ("loguniform", ("gamma_min", "gamma_max")),
    "stage2.phi": ("loguniform", ("phi_min", "phi_max")),
    "stage2.lr": ("choice", ("lrs",)),
    "stage2.init": ("choice", ("inits",)),
    "stage2.predictor_lr": ("choice", ("predictor_lrs",)),
    "stage2.eta_lr": ("choice", ("eta_lrs",)),
}


@dataclass
class SearchOutcome:
    candidates: list[Candidate]  # every (trial, epoch), in the search's order
    selection: Selection


def param_space(tune_config: TuneConfig) -> dict:
    from ray import tune

    samplers = {"loguniform": tune.loguniform, "choice": tune.choice}
    space = {}
    for key, (sampler, fields) in SEARCHED.items():
        arguments = [getattr(tune_config, name) for name in fields]
        if sampler == "choice" and not arguments[0]:
            continue
        space[key] = samplers[sampler](*arguments)
    return space


def searched_values(config: PipelineConfig) -> dict:
    """The searchable keys' values in ``config``: the params of a run (whether searched or not)."""
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
                params={**searched_values(config), **result.config},
                model_dir=join(location_of(checkpoint.path, checkpoint.filesystem), MODEL_SUBDIR),
            ))
    if not candidates:
        raise RuntimeError("the search finished without a single reported epoch")
    return SearchOutcome(candidates, select(candidates, reference, config.stage2.selection_tolerance))


def without_search(config: PipelineConfig, epochs: list[EpochCheckpoint], reference: float) -> SearchOutcome:
    """The outcome of one stage-2 run on Ray Train (``tune.num_samples=0``)."""
    params = searched_values(config)
    candidates = [
        Candidate("stage2", c.epoch, c.metrics["dev_accuracy"], c.metrics["dev_flops_speedup"], params,
                  join(c.path, MODEL_SUBDIR))
        for c in epochs
    ]
    return SearchOutcome(candidates, select(candidates, reference, config.stage2.selection_tolerance))


def calibrate_front(outcome: SearchOutcome, config: PipelineConfig, reference: float) -> SearchOutcome:
    """Calibration in the loop: each candidate of the front that is within the tolerance is
    calibrated on dev (:func:`adapler.calibration.calibrate`: the fastest global eta factor whose
    dev accuracy stays within the tolerance of the candidate's own, and of the reference). Every
    factor measured becomes a candidate of its own (same trial, epoch and model, another factor),
    and the rule selects again over them all."""
    floor = reference - config.stage2.selection_tolerance
    eligible = [c for c in outcome.selection.front if c.factor == 1.0 and c.dev_accuracy >= floor]
    if not eligible:
        return outcome
    data = load_data(config)
    candidates = list(outcome.candidates)
    for candidate in eligible:
        model = AdapLeRForSequenceClassification.from_pretrained(local_copy(candidate.model_dir))
        dev = make_loader(data.dev, model.tokenizer, config.stage2.batch_size, config.data.max_length)
        # At most one tolerance below its own accuracy, never under the floor: the bisection walks
        # to the edge of what dev allows, and a small dev split's noise is of that size too.
        budget = min(config.stage2.selection_tolerance, candidate.dev_accuracy - floor)
        def progress(point, c=candidate) -> None:
            print(f"        trial {c.trial} epoch {c.epoch}: etas x {point.factor:.3g} -> dev accuracy "
                  f"{point.accuracy:.4f}, {point.flops_speedup:.2f}x FLOPs", flush=True)

        curve = calibrate(model, dev, max_drop=max(budget, 0.0), on_point=progress).points
        candidates += [
            dataclasses.replace(candidate, dev_accuracy=p.accuracy, dev_flops_speedup=p.flops_speedup, factor=p.factor)
            for p in curve if p.factor != 1.0
        ]
    return SearchOutcome(candidates, select(candidates, reference, config.stage2.selection_tolerance))


def write_pareto(candidates: list[Candidate], selection: Selection, directory: Path, reference: float) -> dict[str, Path]:
    """pareto.csv (all candidates, front and chosen flagged, one column per param) and pareto.png
    (speedup vs dev accuracy)."""
    import pandas as pd

    from adapler.pictures import pareto_plot

    directory.mkdir(parents=True, exist_ok=True)
    front = {id(p) for p in selection.front}
    rows = []
    for c in candidates:
        row = {k: v for k, v in asdict(c).items() if k != "params"}
        rows.append({**row, **c.params, "pareto": id(c) in front, "chosen": c is selection.chosen})
    pd.DataFrame(rows).to_csv(directory / "pareto.csv", index=False)
    chosen = selection.chosen
    pareto_plot(
        [(p.dev_flops_speedup, p.dev_accuracy) for p in candidates],
        [(p.dev_flops_speedup, p.dev_accuracy) for p in selection.front],
        (chosen.dev_flops_speedup, chosen.dev_accuracy),
        directory / "pareto.png", reference=reference,
    )
    return {"pareto.csv": directory / "pareto.csv", "pareto.png": directory / "pareto.png"}
