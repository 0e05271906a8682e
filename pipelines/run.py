"""The driver: stage 1 (Ray Train) -> saliency (Ray Data) -> stage 2 search (Ray Tune) ->
registration (MLflow, with the chosen model's operating points measured on dev: accurate,
balanced, fast), then a summary of the backbone against the chosen model on test.

Runs the same on a laptop (a local Ray is started) and as a `ray job submit` entrypoint on a
cluster (ray.init() joins the job's cluster). Every stage is an MLflow run nested under one
parent run; the stage-1 outcome is written to <output_dir>/<name>/stage1.json so that
`adapler tune` can search again without retraining stage 1.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
from transformers import AutoTokenizer

from adapler.artifacts import RUN_MODEL_SUBDIR
from adapler.batching import make_loader
from adapler.config import save_config
from adapler.evaluate import budget_gain, evaluate, paired_throughput
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.data import load_data
from adapler.calibration import apply_factor, measure_operating_points
from adapler.onnx_export import export_model_dir
from adapler.operating_points import OperatingPoints
from adapler.selection import (Candidate, best_epochs, certificate, loose_bound_warning, no_pruning_warning,
                               tolerance_warning)
from adapler_pipelines.calibrate import points_tags, write_points_curve
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.ray_local import init_ray
from adapler_pipelines.registry import PACKAGED_BACKBONE, TEST_SPLIT_TAG, model_name, promote, register_model
from adapler_pipelines.report import chosen_model_pictures
from adapler_pipelines.saliency import compute_saliency, rows_fingerprint
from adapler_pipelines.storage import is_uri, join, local_copy
from adapler_pipelines.tracking import client_for, log_stage_run, setup_mlflow, tracking_uri
from adapler_pipelines.train import MODEL_SUBDIR, fit_stage
from adapler_pipelines.tune import (
    TRIAL_PREFIX,
    BudgetInputs,
    SearchOutcome,
    calibrate_front,
    param_space,
    resolve_budgets,
    search,
    without_search,
    write_pareto,
)

STAGE1_MANIFEST = "stage1.json"


class Stage1Missing(FileNotFoundError):
    """`adapler tune` without the stage-1 results of an earlier `adapler run` (one line)."""


@dataclass
class Stage1Outcome:
    checkpoints: list[dict]  # {"path" (a location: local or URI), "epoch", "dev_accuracy"}, best first
    saliency_path: str  # a location

    @property
    def reference(self) -> float:
        return self.checkpoints[0]["dev_accuracy"]

    @property
    def best_model_dir(self) -> str:
        return join(self.checkpoints[0]["path"], MODEL_SUBDIR)


@dataclass
class PipelineSummary:
    dataset: str
    backbone: str
    stage1_dev_accuracy: float
    backbone_test_accuracy: float
    adapler_test_accuracy: float
    flops_speedup: float  # against the backbone at data.max_length
    input_budget: int  # the chosen model's max_length (tokens); data.max_length or a searched shorter one
    backbone_input_budget: int  # data.max_length
    backbone_examples_per_s: float
    adapler_examples_per_s: float
    registered_model: str
    version: str
    no_pruning: bool  # the chosen model's dev speedup is under adapler.selection.NO_PRUNING_FLOOR
    # False: no trained model stayed within stage2.selection_tolerance of stage 1's dev accuracy;
    # the chosen one is the most accurate, less accurate than the backbone
    within_tolerance: bool
    warning: str  # one sentence each when no_pruning or not within_tolerance, with what to try next; else ""
    alias: str  # what the new version became: "champion" or "challenger"
    promotion: str  # one sentence: which happened and why
    run_dir: str  # <output_dir>/<name>
    model_dir: str  # <run_dir>/model: a copy of the chosen model
    chosen: dict
    wall_seconds: float
    operating_points: dict | None = None  # the registered model's (OperatingPoints.to_dict), None if off
    # The chosen point's paired evidence on dev (adapler.selection.Certificate), None under the marginal rule
    certificate: dict | None = None

    def table(self) -> str:
        rows = [
            ("", "backbone (stage 1)", "AdapLeR (chosen)"),
            ("test accuracy", f"{self.backbone_test_accuracy:.4f}", f"{self.adapler_test_accuracy:.4f}"),
            ("input budget (tokens)", f"{self.backbone_input_budget}", f"{self.input_budget}"),
            ("FLOPs speedup", "1.00x", f"{self.flops_speedup:.2f}x"),
            ("eta factor (calibration)", "", f"{self.chosen['factor']:.3g}"),
            ("examples/s (sorted batches)", f"{self.backbone_examples_per_s:.1f}", f"{self.adapler_examples_per_s:.1f}"),
        ]
        return "\n".join(f"{a:<26}{b:>20}{c:>20}" for a, b, c in rows)


def run_stage1(config: PipelineConfig, out: Path, parent_run_id: str) -> Stage1Outcome:
    print(f"[1/4] stage 1: fine-tune {config.model.backbone or 'the packaged MiniLM-L6'} on Ray Train "
          f"({config.ray.num_workers} worker(s), {config.stage1.epochs} epoch(s))", flush=True)
    epochs = fit_stage(config, "stage1", f"{config.name}-stage1")
    history = [c.metrics for c in epochs]
    log_stage_run(config, "stage1", history, parent_run_id=parent_run_id)
    best = [epochs[i] for i in best_epochs(history, config.saliency_checkpoints)]
    print(f"[2/4] saliency labels on Ray Data from the {len(best)} best stage-1 epoch(s)", flush=True)
    data = load_data(config)
    saliency_path = compute_saliency(
        data.train, [join(c.path, MODEL_SUBDIR) for c in best], config.data.max_length,
        saliency_location(config, out), num_actors=config.ray.saliency_actors,
        cpus_per_actor=config.ray.cpus_per_worker, use_gpu=config.ray.use_gpu,
    )
    outcome = Stage1Outcome(
        [{"path": c.path, "epoch": c.epoch, "dev_accuracy": c.metrics["dev_accuracy"]} for c in best],
        saliency_path,
    )
    (out / STAGE1_MANIFEST).write_text(json.dumps(asdict(outcome), indent=2))
    return outcome


def saliency_location(config: PipelineConfig, out: Path) -> str:
    """<run dir>/saliency; with ray.storage_path in object storage, <storage>/<name>/saliency, where
    the Tune trials and Train workers of every node can read it."""
    if is_uri(config.ray.storage_path):
        return join(config.ray.storage_path, config.name, "saliency")
    return str(out / "saliency")


def load_stage1(out: Path) -> Stage1Outcome:
    manifest = out / STAGE1_MANIFEST
    if not manifest.is_file():
        raise Stage1Missing(f"no stage-1 results at {manifest}: run `adapler run` first (same --config and name)")
    return Stage1Outcome(**json.loads(manifest.read_text()))


def earlier_stage1(config: PipelineConfig) -> Path | None:
    """``config.run_dir`` when an earlier run of the same name left its stage-1 outcome there (for
    ``run_pipeline(config, stage1_only_from=...)``), else None; says which on stdout."""
    if (config.run_dir / STAGE1_MANIFEST).is_file():
        print(f"reusing the stage-1 checkpoints and saliency labels of {config.run_dir} (as `adapler tune` does)")
        return config.run_dir
    print(f"no {config.run_dir / STAGE1_MANIFEST} to reuse yet: training stage 1")
    return None


def prepare_budgets(config: PipelineConfig, stage1: Stage1Outcome, out: Path) -> dict[int, BudgetInputs]:
    """Per input budget the search tries: saliency labels on the training texts cut to it (from
    the same stage-1 checkpoints; the full length's are stage 1's own) and its dev FLOPs gain."""
    data = load_data(config)
    backbone = AdapLeRForSequenceClassification.from_pretrained(local_copy(stage1.best_model_dir))
    budgets = {}
    for budget in config.tune.max_lengths or [config.data.max_length]:
        if budget == config.data.max_length:
            path = stage1.saliency_path
        else:
            print(f"      saliency labels at an input budget of {budget} tokens", flush=True)
            path = compute_saliency(
                data.train, [join(c["path"], MODEL_SUBDIR) for c in stage1.checkpoints], budget,
                saliency_location(config, out), num_actors=config.ray.saliency_actors,
                cpus_per_actor=config.ray.cpus_per_worker, use_gpu=config.ray.use_gpu,
            )
        budgets[budget] = BudgetInputs(path, budget_gain(backbone, data.dev, config.data.max_length, budget))
    return budgets


def run_stage2(config: PipelineConfig, stage1: Stage1Outcome, out: Path, parent_run_id: str) -> SearchOutcome:
    if config.tune.num_samples > 0:
        print(f"[3/4] stage 2: Ray Tune search, {config.tune.num_samples} trial(s) x {config.stage2.epochs} "
              f"epoch(s) over {', '.join(param_space(config.tune))} (input budgets: "
              f"{', '.join(map(str, config.tune.max_lengths or [config.data.max_length]))} tokens)", flush=True)
        outcome = search(config, stage1.best_model_dir, prepare_budgets(config, stage1, out), stage1.reference,
                         f"{config.name}-tune", parent_run_id)
    else:
        print(f"[3/4] stage 2 on Ray Train ({config.stage2.epochs} epoch(s), no search)", flush=True)
        init_dir = stage1.best_model_dir if config.stage2.init == "finetuned" else None
        epochs = fit_stage(config, "stage2", f"{config.name}-stage2", init_dir=init_dir,
                           saliency_path=stage1.saliency_path, reference_dev_score=stage1.reference)
        log_stage_run(config, f"{TRIAL_PREFIX}stage2", [c.metrics for c in epochs], parent_run_id=parent_run_id)
        outcome = without_search(config, epochs, stage1.reference)
    if config.tune.calibrate:
        print("      calibrating the front's models on dev (global eta factor)", flush=True)
        outcome = calibrate_front(outcome, config, stage1.reference, stage1.best_model_dir)
    write_pareto(outcome.candidates, outcome.selection, out / "report", stage1.reference)
    mlflow.log_artifacts(str(out / "report"), artifact_path="report", run_id=parent_run_id)
    if not outcome.selection.eligible:
        print("      no trial stayed within the accuracy tolerance; the most accurate one was chosen", flush=True)
    return outcome


def keep_chosen_model(chosen: Candidate, out: Path, full_max_length: int) -> Path:
    """The chosen model, at its eta factor, at <run dir>/model: the path the README and the CLI
    name. A model at a shorter input budget records ``full_max_length`` as the length its
    speedups are against (``settings.reference_max_length``)."""
    target = out / RUN_MODEL_SUBDIR
    if target.exists():
        shutil.rmtree(target)
    model = AdapLeRForSequenceClassification.from_pretrained(local_copy(chosen.model_dir))
    model = apply_factor(model, chosen.factor)  # config.json records the factor
    if model.tokenizer.model_max_length < full_max_length:  # a shorter searched budget: and the backbone's
        model.settings = dataclasses.replace(model.settings, reference_max_length=full_max_length)
    model.save_pretrained(target)
    return target


def store_operating_points(config: PipelineConfig, model_dir: Path, dev: pd.DataFrame, data_name: str,
                           report_dir: Path) -> tuple[OperatingPoints | None, dict[str, Path]]:
    """Measure the operating points of the model in ``model_dir`` on ``dev`` (accurate, balanced,
    fast and the curve: adapler.operating_points), store them in its config.json and write the
    curve to <report_dir>/operating_points/curve.{csv,png}. Returns the points and the curve files
    as registration artefacts; (None, {}) when ``operating_points.enabled`` is false."""
    if not config.operating_points.enabled:
        return None, {}
    print("      operating points of the chosen model on dev (accurate / balanced / fast)", flush=True)
    model = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    loader = make_loader(dev, model.tokenizer, 32, model.tokenizer.model_max_length)

    def progress(point) -> None:
        print(f"        etas x {point.factor:.3g} -> dev accuracy {point.accuracy:.4f}, "
              f"{point.flops_speedup:.2f}x FLOPs", flush=True)

    model.operating_points = measure_operating_points(
        model, loader, config.operating_points.budgets, data=f"{data_name} dev ({len(dev)} examples)", on_point=progress,
        flops_gain=budget_gain(model, dev), confidence=config.stage2.selection_confidence)
    model.save_pretrained(model_dir)
    print(f"      operating points: {model.operating_points.describe()}", flush=True)
    files = write_points_curve(model.operating_points, report_dir / "operating_points")
    return model.operating_points, {"operating_points/curve.csv": files["csv"], "operating_points/curve.png": files["png"]}


def finish(config: PipelineConfig, stage1: Stage1Outcome, outcome: SearchOutcome, out: Path,
           parent_run_id: str, start: float) -> PipelineSummary:
    print("[4/4] test set: backbone vs chosen model; registering the chosen model in MLflow", flush=True)
    chosen = outcome.selection.chosen
    data = load_data(config)
    backbone = AdapLeRForSequenceClassification.from_pretrained(local_copy(stage1.best_model_dir))
    model_dir = keep_chosen_model(chosen, out, config.data.max_length)
    points, curve_files = store_operating_points(config, model_dir, data.dev, data.name, out / "report")
    if config.mlflow.onnx_export:  # after the points: they live in config.json, outside the graphs
        export_model_dir(model_dir, model_dir, "int8" if config.mlflow.onnx_export == "int8" else "none")
    model = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    # Each at its own input budget (the chosen model's may be shorter); speedups against the backbone.
    base = evaluate(backbone, make_loader(data.test, backbone.tokenizer, 32, config.data.max_length),
                    removal="none", progress=True, desc="test (backbone)")
    ours = evaluate(model, make_loader(data.test, model.tokenizer, 32, model.tokenizer.model_max_length),
                    removal="packed", progress=True, desc="test (AdapLeR)")
    flops_speedup = ours.flops_speedup * budget_gain(model, data.test, config.data.max_length)
    base_speed, our_speed = paired_throughput(backbone, model, data.test)
    no_pruning = no_pruning_warning(
        chosen.dev_flops_speedup,
        f"try `adapler tune --config {out / 'config.json'} --set stage2.epochs={config.stage2.epochs + 2} "
        f"--set stage2.eta_lr={config.stage2.eta_lr * 4:g} --set tune.phi_max={config.tune.phi_max * 5:g}`",
    )
    low, high = config.tune.phi_min / 3, max(config.tune.phi_min, config.tune.phi_max / 4)
    accuracy_lost = tolerance_warning(  # the search's first trials take stage2.phi: inside the lower range
        outcome.selection, stage1.reference, config.stage2.selection_tolerance,
        f"try `adapler tune --config {out / 'config.json'} --set tune.inits=[finetuned] --set tune.phi_min={low:g} "
        f"--set tune.phi_max={high:g} --set stage2.phi={math.sqrt(low * high):.2g}`",
    )
    trust = certificate(outcome.selection, config.stage2.selection_tolerance, config.stage2.selection_relative_tolerance)
    warning = " ".join(w for w in (no_pruning, accuracy_lost, loose_bound_warning(trust)) if w)
    metrics = {
        "stage1_dev_accuracy": stage1.reference, "dev_accuracy": chosen.dev_accuracy,
        "backbone_test_accuracy": base.accuracy, "test_accuracy": ours.accuracy,
        "flops_speedup": flops_speedup, "dev_flops_speedup": chosen.dev_flops_speedup,
        "input_budget": model.tokenizer.model_max_length,
        "backbone_examples_per_s": base_speed, "adapler_examples_per_s": our_speed,
        "eta_factor": chosen.factor, **(trust.metrics() if trust else {}),
    }
    if warning:
        print(f"      warning: {warning}", flush=True)
    mlflow.log_metrics(metrics, run_id=parent_run_id)
    tags = {TEST_SPLIT_TAG: rows_fingerprint(data.test), "eta_factor": f"{chosen.factor:.6g}",
            **(points_tags(points) if points else {})}
    name, version = register_model(model_dir, config, metrics, model_name(config), parent_run_id=parent_run_id,
                                   tags=tags, artifacts=curve_files)
    # A loose bound is said (warning), not held against promotion: small dev splits are the norm.
    promotion = promote(name, version, config, " ".join(w for w in (no_pruning, accuracy_lost) if w))
    print(f"      {name}: {promotion.reason}", flush=True)
    client = client_for(config.mlflow.tracking_uri)
    for key, value in (("registered_model", name), ("version", version), ("alias", promotion.alias),
                       ("promotion", promotion.reason), ("no_pruning", str(bool(no_pruning)).lower()),
                       ("within_tolerance", str(not accuracy_lost).lower()),
                       ("warning", warning)):
        if value:
            client.set_tag(parent_run_id, f"adapler.{key}", value)
    summary = PipelineSummary(
        dataset=data.name, backbone=config.model.backbone or PACKAGED_BACKBONE,
        stage1_dev_accuracy=stage1.reference, backbone_test_accuracy=base.accuracy,
        adapler_test_accuracy=ours.accuracy, flops_speedup=flops_speedup, input_budget=model.tokenizer.model_max_length,
        backbone_input_budget=config.data.max_length,
        backbone_examples_per_s=base_speed, adapler_examples_per_s=our_speed,
        registered_model=name, version=version, no_pruning=bool(no_pruning), within_tolerance=not accuracy_lost,
        warning=warning,
        alias=promotion.alias, promotion=promotion.reason, run_dir=str(out), model_dir=str(model_dir), chosen=asdict(chosen),
        wall_seconds=time.perf_counter() - start, operating_points=points.to_dict() if points else None,
        certificate=trust.to_dict() if trust else None,
    )
    (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    return summary


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


def run_pipeline(config: PipelineConfig, stage1_only_from: Path | None = None) -> PipelineSummary:
    """The whole pipeline; with stage1_only_from (= `adapler tune`), reuse that stage-1 outcome."""
    start = time.perf_counter()
    config = absolute_paths(config)
    stage1 = load_stage1(stage1_only_from) if stage1_only_from is not None else None  # before Ray and MLflow
    if config.tune.num_samples > 0:  # the input budgets the search tries, recorded in config.json
        config = resolve_budgets(config, AutoTokenizer.from_pretrained(config.model.backbone_path()))
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    init_ray(config.ray.address)
    setup_mlflow(config.mlflow)
    with mlflow.start_run(run_name=config.name) as parent:
        mlflow.log_artifact(str(out / "config.json"), run_id=parent.info.run_id)
        if stage1 is None:
            stage1 = run_stage1(config, out, parent.info.run_id)
        outcome = run_stage2(config, stage1, out, parent.info.run_id)
        summary = finish(config, stage1, outcome, out, parent.info.run_id, start)
        chosen_model_pictures(config, summary.model_dir, out / "report", parent.info.run_id)
    return summary
