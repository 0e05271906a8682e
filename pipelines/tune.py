"""Stage 2 search on Ray Tune: sampled values are dotted config keys, applied like ``--set``.

The search space is :data:`SEARCHED`: one line per searched config key, its sampler and the
``tune`` fields that bound it. A trial applies its sampled values to the config with
:func:`adapler.config.apply_overrides` (the ``--set`` code), trains with the real config it
gets, and logs its own MLflow run from inside (params = that config, one step per epoch).
Multi-objective (dev accuracy up, FLOPs speedup up) with Optuna, whose first trials take each
input budget in turn, then a gentler phi (:func:`first_points`); ASHA stops trials early on
:func:`adapler.selection.early_stopping_score`, all but the gentler one. Every trial shares the
stage-1 checkpoints; the input budget (``data.max_length``) is searched too, each budget with
saliency labels computed once before the search (:class:`BudgetInputs`), and every speedup is
against the full-length backbone. After it, :func:`paired_selection` compares every trained
model with stage 1 on dev, example by example, and scales the etas of each trial's best model
(calibration in the loop). The outcome is every (trial, epoch, eta factor) candidate and the
selection rule over them (:mod:`adapler.selection`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adapler.batching import input_budgets, make_loader, token_counts
from adapler.calibration import calibrate
from adapler.config import ConfigError, apply_overrides, config_from_dict, config_to_dict, get_dotted
from adapler.data import DatasetSplits, configured_unlabeled, load_data
from adapler.evaluate import budget_gain
from adapler.evidence import paired_goal, reference_predictions, with_evidence
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.run_layout import checkpoint_model_dir
from adapler.selection import (
    GENTLER_PHI,
    Candidate,
    Selection,
    early_stopping_score,
    select_for,
)
from adapler_pipelines.config import PipelineConfig, TuneConfig
from adapler_pipelines.storage import local_copy, location_of
from adapler_pipelines.tracking import StageRun, end_open_runs, tracking_uri
from adapler_pipelines.train import EpochCheckpoint, run_stage, storage_path

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
    "data.max_length": ("choice", ("max_lengths",)),  # the input budget (resolved by resolve_budgets)
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


def first_points(config: PipelineConfig) -> list[dict]:
    """The search's first trials, before random draws. One per input budget in
    ``tune.max_lengths``, shortest first (the cheapest to train, and the ones truncation says
    matter most on long texts), each at the config's own values of the other searched keys
    (clamped into their ranges). Without them, 4 trials over 5 budgets can miss the short ones
    (BBC News: 256, 512, 128, 256). Then :func:`gentler_point`."""
    gentler = gentler_point(config)
    return _budget_points(config) + ([gentler] if gentler else [])


def gentler_point(config: PipelineConfig) -> dict | None:
    """The longest budget once more at half the config's phi
    (:data:`adapler.selection.GENTLER_PHI`, clamped; None where the clamp leaves phi as it was):
    a trial that prunes too hard loses accuracy that scaling its etas down does not give back
    (on the full Rotten Tomatoes data every trial at phi >= 0.3 read 0.70-0.79 on dev with removal
    off, against stage 1's 0.805), so the search tries the gentler side too. ASHA
    does not stop it early (:class:`adapler_pipelines.early_stopping.ASHAKeepingOne`)."""
    longest = _budget_points(config)[-1]
    phi = max(longest["stage2.phi"] * GENTLER_PHI, config.tune.phi_min)
    return {**longest, "stage2.phi": phi} if phi < longest["stage2.phi"] else None


def _budget_points(config: PipelineConfig) -> list[dict]:
    space = param_space(config.tune)
    start = {}
    for key, (sampler, fields) in SEARCHED.items():
        if key not in space:
            continue
        value, bounds = get_dotted(config, key), [getattr(config.tune, name) for name in fields]
        if sampler == "loguniform":
            start[key] = min(max(value, bounds[0]), bounds[1])
        else:
            start[key] = value if value in bounds[0] else bounds[0][0]
    budgets = sorted(config.tune.max_lengths) if "data.max_length" in space else []
    return [{**start, "data.max_length": budget} for budget in budgets] or [start]


def searched_values(config: PipelineConfig) -> dict:
    """The searchable keys' values in ``config``: the params of a run (whether searched or not)."""
    return {key: get_dotted(config, key) for key in SEARCHED}


def resolve_budgets(config: PipelineConfig, tokenizer) -> PipelineConfig:
    """``config`` with ``tune.max_lengths`` made explicit: the given budgets (each at most
    data.max_length), or for None those of :func:`adapler.batching.input_budgets` over the
    training texts. ConfigError for a budget above data.max_length or under 8 tokens."""
    full = config.data.max_length
    budgets = config.tune.max_lengths
    if budgets is None:
        data = load_data(config)
        counts = token_counts(tokenizer, data.train["text"].tolist(), data.train["text_pair"].tolist(), full)
        budgets = input_budgets(full, max(counts))
    wrong = [b for b in budgets if not 8 <= b <= full]
    if wrong:
        raise ConfigError(f"tune.max_lengths {wrong}: each input budget must be between 8 and data.max_length={full}")
    return apply_overrides(config, {"tune.max_lengths": sorted(set(budgets))})


@dataclass(frozen=True)
class BudgetInputs:
    """What a trial at one input budget needs, prepared once before the search."""

    saliency_path: str  # labels computed on the training texts cut to the budget
    dev_gain: float  # adapler.evaluate.budget_gain on dev: budget speedup -> full-length speedup


def stage2_trial(
    sampled: dict, base: dict, stage1_dir: str, budgets: dict[int, BudgetInputs], reference: float, parent_run_id: str
) -> None:
    """A Tune function trainable: one stage-2 run with the sampled config keys. Its dev FLOPs
    speedup is against the backbone at the run's full input length, also when the trial's budget
    is shorter (``dev_flops_speedup_at_budget``: against the backbone at its own budget)."""
    from ray import tune
    from ray.tune import Checkpoint

    config = apply_overrides(config_from_dict(base, PipelineConfig), sampled)
    torch.set_num_threads(config.ray.cpus_per_worker)
    tolerance = config.stage2.selection_tolerance
    trial = tune.get_context().get_trial_id()
    budget = budgets[config.data.max_length]
    with StageRun(config, f"{TRIAL_PREFIX}{trial}", parent_run_id) as run:

        def report(metrics: dict, directory: str | None) -> None:
            metrics = {
                **metrics,
                "dev_flops_speedup_at_budget": metrics["dev_flops_speedup"],
                "dev_flops_speedup": metrics["dev_flops_speedup"] * budget.dev_gain,
            }
            run.log_epoch(metrics, metrics["epoch"])  # before tune.report: a stopped trial does not return
            score = early_stopping_score(metrics["dev_accuracy"], metrics["dev_flops_speedup"], reference, tolerance)
            tune.report(
                {**metrics, "objective": score}, checkpoint=Checkpoint.from_directory(directory) if directory else None
            )

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            init_dir = stage1_dir if config.stage2.init == "finetuned" else None
            run_stage(
                config,
                "stage2",
                report,
                init_dir=init_dir,
                saliency_path=budget.saliency_path,
                reference_dev_score=reference,
            )
        else:
            with checkpoint.as_directory() as directory:
                run_stage(
                    config,
                    "stage2",
                    report,
                    resume_dir=directory,
                    saliency_path=budget.saliency_path,
                    reference_dev_score=reference,
                )


def search(
    config: PipelineConfig,
    stage1_dir: str,
    budgets: dict[int, BudgetInputs],
    reference: float,
    run_name: str,
    parent_run_id: str,
) -> SearchOutcome:
    """The search over :func:`param_space`; ``budgets``: the inputs of every input budget in
    ``tune.max_lengths`` (resolved by :func:`resolve_budgets`)."""
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from adapler_pipelines.early_stopping import ASHAKeepingOne

    t = config.tune
    trainable = tune.with_resources(
        tune.with_parameters(
            stage2_trial,
            base=config_to_dict(config),
            stage1_dir=stage1_dir,
            budgets=budgets,
            reference=reference,
            parent_run_id=parent_run_id,
        ),
        {"cpu": config.ray.cpus_per_worker, "gpu": 1 if config.ray.use_gpu else 0},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(t),
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(
                metric=["dev_accuracy", "dev_flops_speedup"],
                mode=["max", "max"],
                seed=t.seed,
                points_to_evaluate=first_points(config),
            ),
            scheduler=ASHAKeepingOne(
                gentler_point(config),
                metric="objective",
                mode="max",
                time_attr="training_iteration",
                grace_period=t.grace_period,
                max_t=config.stage2.epochs,
            ),
            num_samples=t.num_samples,
            max_concurrent_trials=t.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_path(config),
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
            candidates.append(
                Candidate(
                    trial=str(metrics.get("trial_id", Path(result.path).name)),
                    epoch=int(metrics["epoch"]),
                    dev_accuracy=metrics["dev_accuracy"],
                    dev_flops_speedup=metrics["dev_flops_speedup"],
                    params={**searched_values(config), **result.config},
                    model_dir=checkpoint_model_dir(location_of(checkpoint.path, checkpoint.filesystem)),
                )
            )
    if not candidates:
        raise RuntimeError("the search finished without a single reported epoch")
    return SearchOutcome(candidates, select_for(candidates, reference, config.stage2))


def without_search(config: PipelineConfig, epochs: list[EpochCheckpoint], reference: float) -> SearchOutcome:
    """The outcome of one stage-2 run on Ray Train (``tune.num_samples=0``)."""
    params = searched_values(config)
    candidates = [
        Candidate(
            "stage2",
            c.epoch,
            c.metrics["dev_accuracy"],
            c.metrics["dev_flops_speedup"],
            params,
            checkpoint_model_dir(c.path),
        )
        for c in epochs
    ]
    return SearchOutcome(candidates, select_for(candidates, reference, config.stage2))


def paired_selection(
    outcome: SearchOutcome,
    config: PipelineConfig,
    data: DatasetSplits,
    reference: float,
    stage1_model_dir: str,
    calibrate_factors: bool = True,
) -> SearchOutcome:
    """The rule of :mod:`adapler.selection` over what stage 2 trained, on paired evidence:
    every trained (trial, epoch) gets its predictions on dev compared with stage 1's
    (``stage1_model_dir``) and with its own weights' with removal off, and its changes on
    ``data.unlabeled_file`` (:mod:`adapler.evidence`). With ``calibrate_factors`` (calibration in
    the loop, ``tune.calibrate``), from each trial the epoch the rule picks is calibrated on dev
    at its input budget with goal ``paired`` at the rule's confidence,
    and every factor measured becomes a candidate of its own (same trial, epoch and model; its
    speedup against the full-length backbone). The rule then selects over them all."""
    stage2 = config.stage2
    unlabeled = configured_unlabeled(config)
    stage1 = AdapLeRForSequenceClassification.from_pretrained(local_copy(stage1_model_dir))
    evidence = reference_predictions(stage1, data.dev, unlabeled, stage2.batch_size)

    def load(candidate: Candidate):
        return AdapLeRForSequenceClassification.from_pretrained(local_copy(candidate.model_dir))

    candidates, trials = [], {}
    for candidate in outcome.candidates:
        if candidate.paired is None:
            candidate = with_evidence(candidate, load(candidate), data.dev, unlabeled, evidence, stage2.batch_size)
            print(
                f"        trial {candidate.trial} epoch {candidate.epoch}: {candidate.paired.changed} of "
                f"{candidate.paired.examples} dev predictions changed against stage 1 "
                f"({candidate.paired.newly_wrong} newly wrong, {candidate.paired.newly_right} newly right)",
                flush=True,
            )
        candidates.append(candidate)
        if candidate.factor == 1.0:
            trials.setdefault(candidate.trial, []).append(candidate)
    for epochs in trials.values() if calibrate_factors else ():
        pick = select_for(epochs, reference, stage2).chosen
        model = load(pick)
        goal = paired_goal(
            model,
            data.dev,
            unlabeled,
            evidence,
            stage2.selection_tolerance,
            stage2.selection_confidence,
            stage2.selection_relative_tolerance,
            stage2.batch_size,
        )
        budget = model.tokenizer.model_max_length

        def progress(point, c=pick, budget=budget) -> None:
            print(
                f"        trial {c.trial} epoch {c.epoch} ({budget} tokens): etas x {point.factor:.3g} -> "
                f"dev accuracy {point.accuracy:.4f}, {point.flops_speedup:.2f}x FLOPs",
                flush=True,
            )

        curve = calibrate(
            model,
            make_loader(data.dev, model.tokenizer, stage2.batch_size, budget),
            paired=goal,
            on_point=progress,
            flops_gain=budget_gain(model, data.dev, config.data.max_length),
        )
        candidates += [
            dataclasses.replace(
                pick,
                dev_accuracy=c.dev_accuracy,
                dev_flops_speedup=c.dev_flops_speedup,
                factor=c.factor,
                paired=c.paired,
                unpruned_paired=c.unpruned_paired,
                label_free=c.label_free,
            )
            for c in curve.paired
            if c.factor != 1.0
        ]
    return SearchOutcome(candidates, select_for(candidates, reference, stage2))


def write_pareto(
    candidates: list[Candidate], selection: Selection, directory: Path, reference: float
) -> dict[str, Path]:
    """pareto.csv (all candidates, front and chosen flagged, one column per param) and pareto.png
    (speedup vs dev accuracy)."""
    import pandas as pd

    from adapler.pictures import pareto_plot

    directory.mkdir(parents=True, exist_ok=True)
    front = {id(p) for p in selection.front}
    rows = []
    for c in candidates:
        row = {k: v for k, v in asdict(c).items() if k not in ("params", "paired", "unpruned_paired", "label_free")}
        if c.paired is not None:
            row.update(changed=c.paired.changed, newly_wrong=c.paired.newly_wrong, newly_right=c.paired.newly_right)
        rows.append({**row, **c.params, "pareto": id(c) in front, "chosen": c is selection.chosen})
    pd.DataFrame(rows).to_csv(directory / "pareto.csv", index=False)
    chosen = selection.chosen
    pareto_plot(
        [(p.dev_flops_speedup, p.dev_accuracy) for p in candidates],
        [(p.dev_flops_speedup, p.dev_accuracy) for p in selection.front],
        (chosen.dev_flops_speedup, chosen.dev_accuracy),
        directory / "pareto.png",
        reference=reference,
    )
    return {"pareto.csv": directory / "pareto.csv", "pareto.png": directory / "pareto.png"}
