"""The driver: stage 1 (Ray Train) -> saliency (Ray Data) -> stage 2 search (Ray Tune) ->
registration (MLflow, with the chosen model's operating points measured on dev: accurate,
balanced, fast), then a summary of the backbone against the chosen model on test.

Runs the same on a laptop (a local Ray is started) and as a `ray job submit` entrypoint on a
cluster (ray.init() joins the job's cluster). Every stage is an MLflow run nested under one
parent run; the run directory is :class:`adapler.run_layout.RunLayout` (the stage-1 outcome in
``stage1.json``, which `adapler tune` reuses; the result in ``summary.json``). The data are
loaded once, by :func:`run_pipeline`, and handed to every step.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from transformers import AutoTokenizer

from adapler.batching import make_loader
from adapler.calibration import apply_factor, attach_operating_points
from adapler.config import save_config
from adapler.data import DatasetSplits, load_data
from adapler.evaluate import EvalResult, budget_gain, evaluate, paired_throughput
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.onnx_export import export_model_dir
from adapler.operating_points import OperatingPoints
from adapler.run_layout import REPORT_DIR, RunLayout
from adapler.run_result import RunResult, backbone_name
from adapler.selection import TEST_SPLIT_TAG, Candidate, RunWarnings, best_epochs, certificate, run_warnings
from adapler.stage1_record import Stage1Record, read_stage1, reusable_stage1, trained_with
from adapler_pipelines.calibrate import points_tags, write_points_curve
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.ray_local import init_ray
from adapler_pipelines.registry import Promotion, model_name, promote, register_model
from adapler_pipelines.report import chosen_model_pictures
from adapler_pipelines.saliency import compute_saliency, rows_fingerprint
from adapler_pipelines.storage import is_uri, join, local_copy
from adapler_pipelines.tracking import client_for, log_stage_run, setup_mlflow, tracking_uri
from adapler_pipelines.train import fit_stage
from adapler_pipelines.tune import (
    TRIAL_PREFIX,
    BudgetInputs,
    SearchOutcome,
    paired_selection,
    param_space,
    resolve_budgets,
    search,
    without_search,
    write_pareto,
)


# --------------------------------------------------------------------------- stage 1 and saliency
def run_stage1(config: PipelineConfig, data: DatasetSplits, layout: RunLayout, parent_run_id: str) -> Stage1Record:
    print(
        f"[1/4] stage 1: fine-tune {config.model.backbone or 'the packaged MiniLM-L6'} on Ray Train "
        f"({config.ray.num_workers} worker(s), {config.stage1.epochs} epoch(s))",
        flush=True,
    )
    epochs = fit_stage(config, "stage1", f"{config.name}-stage1")
    history = [c.metrics for c in epochs]
    log_stage_run(config, "stage1", history, parent_run_id=parent_run_id)
    best = [epochs[i] for i in best_epochs(history, config.saliency_checkpoints)]
    print(f"[2/4] saliency labels on Ray Data from the {len(best)} best stage-1 epoch(s)", flush=True)
    record = Stage1Record(
        [{"path": c.path, "epoch": c.epoch, "dev_accuracy": c.metrics["dev_accuracy"]} for c in best],
        trained_with=trained_with(config),
    )
    record.saliency_path = saliency_at(config, data, record, layout, config.data.max_length)
    record.write(layout)
    return record


def saliency_at(
    config: PipelineConfig, data: DatasetSplits, stage1: Stage1Record, layout: RunLayout, budget: int
) -> str:
    """The location of the saliency labels of the training texts cut to ``budget`` tokens,
    averaged over stage 1's kept checkpoints (computed on Ray Data unless already complete):
    under <run dir>/saliency, or with ray.storage_path in object storage under
    <storage>/<name>/saliency, where the Tune trials and Train workers of every node can read it."""
    where = str(layout.saliency)
    if is_uri(config.ray.storage_path):
        where = join(config.ray.storage_path, config.name, layout.saliency.name)
    return compute_saliency(
        data.train,
        stage1.model_dirs,
        budget,
        where,
        num_actors=config.ray.saliency_actors,
        cpus_per_actor=config.ray.cpus_per_worker,
        use_gpu=config.ray.use_gpu,
    )


def earlier_stage1(config: PipelineConfig) -> Path | None:
    """``config.run_dir`` when an earlier run left there a stage-1 outcome trained with the same
    model, data and stage-1 config (:func:`adapler.stage1_record.reusable_stage1`), for
    ``run_pipeline(config, stage1_only_from=...)``; else None. Says which on stdout."""
    resolved = absolute_paths(config)
    return resolved.run_dir if reusable_stage1(RunLayout.of(resolved), resolved) else None


# --------------------------------------------------------------------------- stage 2
def prepare_budgets(
    config: PipelineConfig, data: DatasetSplits, stage1: Stage1Record, layout: RunLayout
) -> dict[int, BudgetInputs]:
    """Per input budget the search tries: saliency labels on the training texts cut to it (from
    the same stage-1 checkpoints; the full length's are stage 1's own) and its dev FLOPs gain."""
    backbone = AdapLeRForSequenceClassification.from_pretrained(local_copy(stage1.best_model_dir))
    budgets = {}
    for budget in config.tune.max_lengths or [config.data.max_length]:
        if budget == config.data.max_length:
            path = stage1.saliency_path
        else:
            print(f"      saliency labels at an input budget of {budget} tokens", flush=True)
            path = saliency_at(config, data, stage1, layout, budget)
        budgets[budget] = BudgetInputs(path, budget_gain(backbone, data.dev, config.data.max_length, budget))
    return budgets


def run_stage2(
    config: PipelineConfig, data: DatasetSplits, stage1: Stage1Record, layout: RunLayout, parent_run_id: str
) -> SearchOutcome:
    if config.tune.num_samples > 0:
        print(
            f"[3/4] stage 2: Ray Tune search, {config.tune.num_samples} trial(s) x {config.stage2.epochs} "
            f"epoch(s) over {', '.join(param_space(config.tune))} (input budgets: "
            f"{', '.join(map(str, config.tune.max_lengths or [config.data.max_length]))} tokens)",
            flush=True,
        )
        outcome = search(
            config,
            stage1.best_model_dir,
            prepare_budgets(config, data, stage1, layout),
            stage1.reference,
            f"{config.name}-tune",
            parent_run_id,
        )
    else:
        print(f"[3/4] stage 2 on Ray Train ({config.stage2.epochs} epoch(s), no search)", flush=True)
        init_dir = stage1.best_model_dir if config.stage2.init == "finetuned" else None
        epochs = fit_stage(
            config,
            "stage2",
            f"{config.name}-stage2",
            init_dir=init_dir,
            saliency_path=stage1.saliency_path,
            reference_dev_score=stage1.reference,
        )
        log_stage_run(config, f"{TRIAL_PREFIX}stage2", [c.metrics for c in epochs], parent_run_id=parent_run_id)
        outcome = without_search(config, epochs, stage1.reference)
    print(
        "      comparing each trained model with stage 1 on dev"
        + (" and calibrating each trial's best (global eta factor)" if config.tune.calibrate else ""),
        flush=True,
    )
    outcome = paired_selection(outcome, config, data, stage1.reference, stage1.best_model_dir, config.tune.calibrate)
    write_pareto(outcome.candidates, outcome.selection, layout.report, stage1.reference)
    mlflow.log_artifacts(str(layout.report), artifact_path=REPORT_DIR, run_id=parent_run_id)
    if not outcome.selection.eligible:
        print("      no trial stayed within the accuracy tolerance; the most accurate one was chosen", flush=True)
    return outcome


# --------------------------------------------------------------------------- the chosen model
def keep_chosen_model(chosen: Candidate, layout: RunLayout, full_max_length: int) -> Path:
    """The chosen model, at its eta factor, at <run dir>/model: the path the README and the CLI
    name. A model at a shorter input budget records ``full_max_length`` as the length its
    speedups are against (``settings.reference_max_length``)."""
    target = layout.model
    if target.exists():
        shutil.rmtree(target)
    model = AdapLeRForSequenceClassification.from_pretrained(local_copy(chosen.model_dir))
    model = apply_factor(model, chosen.factor)  # config.json records the factor
    if model.tokenizer.model_max_length < full_max_length:  # a shorter searched budget: and the backbone's
        model.settings = dataclasses.replace(model.settings, reference_max_length=full_max_length)
    model.save_pretrained(target)
    return target


def store_operating_points(
    config: PipelineConfig, data: DatasetSplits, layout: RunLayout
) -> tuple[OperatingPoints | None, dict[str, Path]]:
    """The operating points of the model at ``layout.model`` on dev
    (:func:`adapler.calibration.attach_operating_points`), stored in its config.json, the curve
    written to <run dir>/report/operating_points/curve.{csv,png}. Returns the points and the curve
    files as registration artefacts; (None, {}) when ``operating_points.enabled`` is false."""
    if not config.operating_points.enabled:
        return None, {}
    print("      operating points of the chosen model on dev (accurate / balanced / fast)", flush=True)
    model = AdapLeRForSequenceClassification.from_pretrained(layout.model)
    loader = make_loader(data.dev, model.tokenizer, 32, model.tokenizer.model_max_length)

    def progress(point) -> None:
        print(
            f"        etas x {point.factor:.3g} -> dev accuracy {point.accuracy:.4f}, {point.flops_speedup:.2f}x FLOPs",
            flush=True,
        )

    points = attach_operating_points(
        model,
        loader,
        data.dev,
        data.name,
        config.operating_points.budgets,
        on_point=progress,
        confidence=config.stage2.selection_confidence,
    )
    model.save_pretrained(layout.model)
    print(f"      operating points: {points.describe()}", flush=True)
    files = write_points_curve(points, layout.operating_points)
    return points, {"operating_points/curve.csv": files["csv"], "operating_points/curve.png": files["png"]}


@dataclass(frozen=True)
class BackboneAgainstChosen:
    """The backbone (removal off, at data.max_length) against the chosen model (packed removal,
    at its own input budget) on test; speedups against the backbone."""

    backbone: EvalResult
    chosen: EvalResult
    flops_speedup: float
    input_budget: int
    backbone_examples_per_s: float
    adapler_examples_per_s: float


def compare_on_test(
    config: PipelineConfig, data: DatasetSplits, stage1: Stage1Record, model_dir: Path
) -> BackboneAgainstChosen:
    backbone = AdapLeRForSequenceClassification.from_pretrained(local_copy(stage1.best_model_dir))
    model = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    budget = model.tokenizer.model_max_length
    base = evaluate(
        backbone,
        make_loader(data.test, backbone.tokenizer, 32, config.data.max_length),
        removal="none",
        progress=True,
        desc="test (backbone)",
    )
    ours = evaluate(
        model,
        make_loader(data.test, model.tokenizer, 32, budget),
        removal="packed",
        progress=True,
        desc="test (AdapLeR)",
    )
    base_speed, our_speed = paired_throughput(backbone, model, data.test)
    flops_speedup = ours.flops_speedup * budget_gain(model, data.test, config.data.max_length)
    return BackboneAgainstChosen(base, ours, flops_speedup, budget, base_speed, our_speed)


# --------------------------------------------------------------------------- registry
def register_chosen(
    config: PipelineConfig,
    data: DatasetSplits,
    model_dir: Path,
    metrics: dict,
    chosen: Candidate,
    points: OperatingPoints | None,
    curve_files: dict[str, Path],
    warning: str,
    parent_run_id: str,
) -> tuple[str, str, Promotion]:
    """Register the chosen model (tagged with the test split it was measured on, its eta factor
    and operating points) and promote it; returns (name, version, promotion)."""
    tags = {
        TEST_SPLIT_TAG: rows_fingerprint(data.test),
        "eta_factor": f"{chosen.factor:.6g}",
        **(points_tags(points) if points else {}),
    }
    name, version = register_model(
        model_dir, config, metrics, model_name(config), parent_run_id=parent_run_id, tags=tags, artifacts=curve_files
    )
    promotion = promote(name, version, config, warning)
    print(f"      {name}: {promotion.reason}", flush=True)
    return name, version, promotion


def tag_parent_run(
    config: PipelineConfig, parent_run_id: str, name: str, version: str, promotion: Promotion, warnings: RunWarnings
) -> None:
    """The outcome on the parent run's ``adapler.*`` tags (what `adapler report` and a search of
    runs read)."""
    client = client_for(config.mlflow.tracking_uri)
    for key, value in (
        ("registered_model", name),
        ("version", version),
        ("alias", promotion.alias),
        ("promotion", promotion.reason),
        ("no_pruning", str(bool(warnings.no_pruning)).lower()),
        ("within_tolerance", str(not warnings.accuracy_lost).lower()),
        ("warning", warnings.text),
    ):
        if value:
            client.set_tag(parent_run_id, f"adapler.{key}", value)


def finish(
    config: PipelineConfig,
    data: DatasetSplits,
    stage1: Stage1Record,
    outcome: SearchOutcome,
    layout: RunLayout,
    parent_run_id: str,
    start: float,
) -> RunResult:
    """Step 4: keep the chosen model (with its operating points, and its ONNX graphs if asked),
    compare it with the backbone on test, register and promote it, and write the result."""
    print("[4/4] test set: backbone vs chosen model; registering the chosen model in MLflow", flush=True)
    chosen = outcome.selection.chosen
    model_dir = keep_chosen_model(chosen, layout, config.data.max_length)
    points, curve_files = store_operating_points(config, data, layout)
    if config.mlflow.onnx_export:  # after the points: they live in config.json, outside the graphs
        export_model_dir(model_dir, model_dir, "int8" if config.mlflow.onnx_export == "int8" else "none")
    test = compare_on_test(config, data, stage1, model_dir)
    trust = certificate(
        outcome.selection, config.stage2.selection_tolerance, config.stage2.selection_relative_tolerance
    )
    warnings = run_warnings(
        outcome.selection, stage1.reference, f"adapler tune --config {layout.config}", config.stage2, config.tune, trust
    )
    metrics = {
        "stage1_dev_accuracy": stage1.reference,
        "dev_accuracy": chosen.dev_accuracy,
        "backbone_test_accuracy": test.backbone.accuracy,
        "test_accuracy": test.chosen.accuracy,
        "flops_speedup": test.flops_speedup,
        "dev_flops_speedup": chosen.dev_flops_speedup,
        "input_budget": test.input_budget,
        "backbone_examples_per_s": test.backbone_examples_per_s,
        "adapler_examples_per_s": test.adapler_examples_per_s,
        "eta_factor": chosen.factor,
        **(trust.metrics() if trust else {}),
    }
    if warnings.text:
        print(f"      warning: {warnings.text}", flush=True)
    mlflow.log_metrics(metrics, run_id=parent_run_id)
    name, version, promotion = register_chosen(
        config, data, model_dir, metrics, chosen, points, curve_files, warnings.promotion_text, parent_run_id
    )
    tag_parent_run(config, parent_run_id, name, version, promotion, warnings)
    result = RunResult(
        dataset=data.name,
        backbone=backbone_name(config.model.backbone),
        run_dir=str(layout.root),
        model_dir=str(model_dir),
        stage1_dev_accuracy=stage1.reference,
        backbone_test_accuracy=test.backbone.accuracy,
        adapler_test_accuracy=test.chosen.accuracy,
        flops_speedup=test.flops_speedup,
        dev_flops_speedup=chosen.dev_flops_speedup,
        input_budget=test.input_budget,
        backbone_input_budget=config.data.max_length,
        retention=test.chosen.retention,
        no_pruning=bool(warnings.no_pruning),
        within_tolerance=not warnings.accuracy_lost,
        warning=warnings.text,
        chosen=asdict(chosen),
        wall_seconds=time.perf_counter() - start,
        backbone_examples_per_s=test.backbone_examples_per_s,
        adapler_examples_per_s=test.adapler_examples_per_s,
        registered_model=name,
        version=version,
        alias=promotion.alias,
        promotion=promotion.reason,
        operating_points=points.to_dict() if points else None,
        certificate=trust.to_dict() if trust else None,
    )
    result.write(layout)
    return result


def absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """Local paths and the MLflow store made absolute: Ray Train workers and Tune trials run in
    other directories."""
    config = copy.deepcopy(config)
    config.output_dir = str(Path(config.output_dir).resolve())
    for field in ("train_file", "dev_file", "test_file"):
        value = getattr(config.data, field)
        if value and "://" not in value:
            setattr(config.data, field, str(Path(value).resolve()))
    if config.model.backbone and Path(config.model.backbone).exists():
        config.model.backbone = str(Path(config.model.backbone).resolve())
    config.mlflow.tracking_uri = tracking_uri(config.mlflow)
    return config


def run_pipeline(config: PipelineConfig, stage1_only_from: Path | None = None) -> RunResult:
    """The whole pipeline; with stage1_only_from (= `adapler tune`), reuse the stage-1 outcome of
    that run directory."""
    start = time.perf_counter()
    config = absolute_paths(config)
    # before Ray and MLflow: a missing stage 1 or bad data fail in seconds
    stage1 = read_stage1(RunLayout(Path(stage1_only_from))) if stage1_only_from is not None else None
    if config.tune.num_samples > 0:  # the input budgets the search tries, recorded in config.json
        config = resolve_budgets(config, AutoTokenizer.from_pretrained(config.model.backbone_path()))
    layout = RunLayout.of(config)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(config, layout.config)
    data = load_data(config)
    init_ray(config.ray.address)
    setup_mlflow(config.mlflow)
    with mlflow.start_run(run_name=config.name) as parent:
        run_id = parent.info.run_id
        mlflow.log_artifact(str(layout.config), run_id=run_id)
        if stage1 is None:
            stage1 = run_stage1(config, data, layout, run_id)
        outcome = run_stage2(config, data, stage1, layout, run_id)
        result = finish(config, data, stage1, outcome, layout, run_id, start)
        chosen_model_pictures(config, data, layout.model, layout.report, run_id)
    return result
