"""The whole method on one machine, without Ray: data -> stage 1 -> saliency -> stage 2 -> model.

This is the reference run (and what `adapler train` and the inference benchmark use); the Ray
pipeline runs the same steps, each one on Ray.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from adapler.batching import make_loader
from adapler.config import ExperimentConfig, save_config
from adapler.data import DatasetSplits, configured_unlabeled, load_data
from adapler.evaluate import evaluate
from adapler.evidence import predictions
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.paired import changes
from adapler.run_layout import CHECKPOINT_MODEL_SUBDIR, RunLayout
from adapler.run_result import RunResult, backbone_name
from adapler.saliency import saliency_from_checkpoints
from adapler.selection import best_epochs, certificate, run_warnings, select_for
from adapler.stage1_record import Stage1Record, reusable_stage1, trained_with
from adapler.training import EpochReport, train_stage1, train_stage2


def new_model(config: ExperimentConfig, data: DatasetSplits) -> AdapLeRForSequenceClassification:
    model = AdapLeRForSequenceClassification.from_backbone(
        config.model.backbone_path(),
        num_labels=len(data.label_names),
        label_names=data.label_names,
        **dataclasses.asdict(config.model.adapler),
    )
    model.tokenizer.model_max_length = config.data.max_length  # saved with the model: inference truncates alike
    return model.to(config.device)


def checkpoint_saver(directory: Path):
    """Epoch callback: save each epoch as <directory>/<stage>-epoch<k>/ (the model under
    ``model/``, as in a Ray Train checkpoint) with its metrics."""

    def save(report: EpochReport) -> None:
        target = directory / f"{report.stage}-epoch{report.epoch}"
        getattr(report.model, "module", report.model).save_pretrained(target / CHECKPOINT_MODEL_SUBDIR)
        (target / "metrics.json").write_text(json.dumps(report.metrics, indent=2))

    return save


def top_checkpoints(directory: Path, stage: str, k: int) -> list[str]:
    """The k best epochs of a stage by dev accuracy (ties: earlier epoch first)."""
    paths = sorted(directory.glob(f"{stage}-epoch*"), key=lambda path: int(path.name.rsplit("epoch", 1)[1]))
    history = [json.loads((path / "metrics.json").read_text()) for path in paths]
    return [str(paths[i]) for i in best_epochs(history, k)]


def train_stage1_record(
    config: ExperimentConfig, data: DatasetSplits, layout: RunLayout, progress: bool
) -> Stage1Record:
    """Stage 1 from the backbone, each epoch under ``layout.checkpoints``; the record of its
    ``saliency_checkpoints`` best epochs, written to ``layout.stage1``."""
    for stale in layout.checkpoints.glob("stage1-epoch*"):  # an earlier run's epochs must not enter the top-k
        shutil.rmtree(stale)
    model = new_model(config, data)
    loader = make_loader(
        data.train,
        model.tokenizer,
        config.stage1.batch_size,
        config.data.max_length,
        shuffle=True,
        seed=config.stage1.seed,
    )
    dev = make_loader(data.dev, model.tokenizer, config.stage1.batch_size, config.data.max_length)
    train_stage1(model, loader, dev, config.stage1, checkpoint_saver(layout.checkpoints), progress)
    best = top_checkpoints(layout.checkpoints, "stage1", config.saliency_checkpoints)
    record = Stage1Record(
        [
            {
                "path": path,
                "epoch": int(path.rsplit("epoch", 1)[1]),
                "dev_accuracy": json.loads((Path(path) / "metrics.json").read_text())["dev_accuracy"],
            }
            for path in best
        ],
        trained_with=trained_with(config),
    )
    record.write(layout)
    return record


def run_recipe(config: ExperimentConfig, progress: bool = True) -> RunResult:
    start = time.perf_counter()
    layout = RunLayout.of(config)
    layout.root.mkdir(parents=True, exist_ok=True)
    save_config(config, layout.config)
    torch.manual_seed(config.stage1.seed)
    data = load_data(config)
    max_length = config.data.max_length

    # Same backbone, data and stage-1 settings as a finished earlier run: reuse its checkpoints.
    stage1 = reusable_stage1(layout, config) or train_stage1_record(config, data, layout, progress)
    stage1_dev = stage1.reference
    model = AdapLeRForSequenceClassification.from_pretrained(stage1.best_model_dir).to(config.device)
    tok = model.tokenizer
    dev = make_loader(data.dev, tok, config.stage1.batch_size, max_length)
    test = make_loader(data.test, tok, config.stage1.batch_size, max_length)
    backbone_test = evaluate(model, test, removal="none", progress=progress, desc="test (backbone)")
    reference_dev = evaluate(model, dev, removal="none").predictions  # stage 1's, for the paired rule
    unlabeled = configured_unlabeled(config)
    reference_unlabeled = None if unlabeled is None else predictions(model, unlabeled, "none", config.stage2.batch_size)

    saliency = saliency_from_checkpoints(
        stage1.model_dirs, data.train, max_length, device=config.device, progress=progress
    )

    if config.stage2.init == "pretrained":
        model = new_model(config, data)
    train = make_loader(
        data.train, tok, config.stage2.batch_size, max_length, shuffle=True, seed=config.stage2.seed, saliency=saliency
    )
    stage2 = train_stage2(
        model,
        train,
        dev,
        config.stage2,
        stage1_dev,
        checkpoint_saver(layout.checkpoints),
        progress,
        reference_predictions=reference_dev,
    )
    selection = select_for(stage2.candidates, stage1_dev, config.stage2)
    if unlabeled is not None:  # the chosen epoch's changes on texts without labels enter its certificate
        label_free = changes(reference_unlabeled, predictions(model, unlabeled, "packed", config.stage2.batch_size))
        selection = dataclasses.replace(selection, chosen=dataclasses.replace(selection.chosen, label_free=label_free))
    trust = certificate(selection, config.stage2.selection_tolerance, config.stage2.selection_relative_tolerance)
    warnings = run_warnings(selection, stage1_dev, f"adapler train --config {layout.config}", config.stage2, cert=trust)
    adapler_test = evaluate(model, test, removal="packed", progress=progress, desc="test (AdapLeR)")
    model.save_pretrained(layout.model)
    result = RunResult(
        dataset=data.name,
        backbone=backbone_name(config.model.backbone),
        run_dir=str(layout.root),
        model_dir=str(layout.model),
        stage1_dev_accuracy=stage1_dev,
        backbone_test_accuracy=backbone_test.accuracy,
        adapler_test_accuracy=adapler_test.accuracy,
        flops_speedup=adapler_test.flops_speedup,
        dev_flops_speedup=stage2.best_metrics["dev_flops_speedup"],
        input_budget=max_length,
        backbone_input_budget=max_length,
        retention=adapler_test.retention,
        no_pruning=bool(warnings.no_pruning),
        within_tolerance=not warnings.accuracy_lost,
        warning=warnings.text,
        chosen=dataclasses.asdict(selection.chosen),
        wall_seconds=time.perf_counter() - start,
        certificate=trust.to_dict() if trust else None,
    )
    result.write(layout)
    return result
