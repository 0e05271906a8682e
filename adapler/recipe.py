"""The whole method on one machine, without Ray: data -> stage 1 -> saliency -> stage 2 -> model.

This is the reference run (and what `adapler train` and the inference benchmark use); the Ray
pipeline runs the same steps, each one on Ray.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from adapler.batching import make_loader
from adapler.config import ExperimentConfig, config_to_dict, save_config
from adapler.data import DatasetSplits, load_data
from adapler.evaluate import evaluate
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.saliency import saliency_from_checkpoints
from adapler.selection import GENTLER_PHI, best_epochs, no_pruning_warning, select, tolerance_warning
from adapler.training import EpochReport, epoch_candidates, train_stage1, train_stage2

STAGE1_KEY = "stage1_config.json"  # what stage 1 was trained with; a matching rerun reuses it


@dataclass
class RecipeResult:
    model_dir: Path
    stage1_dev_accuracy: float
    backbone_test_accuracy: float
    adapler_test_accuracy: float
    flops_speedup: float  # on test
    dev_flops_speedup: float  # of the selected stage-2 epoch
    retention: list[float]
    wall_seconds: float
    no_pruning: bool  # dev_flops_speedup under adapler.selection.NO_PRUNING_FLOOR
    within_tolerance: bool  # False: no stage-2 epoch stayed within stage2.selection_tolerance of stage 1
    warning: str  # one sentence each when no_pruning or not within_tolerance, with what to try next; else ""

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def new_model(config: ExperimentConfig, data: DatasetSplits) -> AdapLeRForSequenceClassification:
    model = AdapLeRForSequenceClassification.from_backbone(
        config.model.backbone_path(), num_labels=len(data.label_names), label_names=data.label_names,
        **dataclasses.asdict(config.model.adapler),
    )
    model.tokenizer.model_max_length = config.data.max_length  # saved with the model: inference truncates alike
    return model.to(config.device)


def checkpoint_saver(directory: Path):
    """Epoch callback: save each epoch as <directory>/<stage>-epoch<k>/ with its metrics."""

    def save(report: EpochReport) -> None:
        target = directory / f"{report.stage}-epoch{report.epoch}"
        getattr(report.model, "module", report.model).save_pretrained(target)
        (target / "metrics.json").write_text(json.dumps(report.metrics, indent=2))

    return save


def top_checkpoints(directory: Path, stage: str, k: int) -> list[str]:
    """The k best epochs of a stage by dev accuracy (ties: earlier epoch first)."""
    paths = sorted(directory.glob(f"{stage}-epoch*"), key=lambda path: int(path.name.rsplit("epoch", 1)[1]))
    history = [json.loads((path / "metrics.json").read_text()) for path in paths]
    return [str(paths[i]) for i in best_epochs(history, k)]


def run_recipe(config: ExperimentConfig, progress: bool = True) -> RecipeResult:
    start = time.perf_counter()
    out = config.run_dir
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.json")
    torch.manual_seed(config.stage1.seed)
    data = load_data(config)
    max_length = config.data.max_length

    checkpoints = out / "checkpoints"
    stage1_key = json.dumps({k: config_to_dict(config)[k] for k in ("model", "data", "stage1")}, sort_keys=True)
    reuse = (out / STAGE1_KEY).is_file() and (out / STAGE1_KEY).read_text() == stage1_key
    if reuse:
        # Same backbone, data and stage-1 settings as a finished earlier run: reuse its checkpoints.
        best_stage1 = Path(top_checkpoints(checkpoints, "stage1", 1)[0])
        model = AdapLeRForSequenceClassification.from_pretrained(best_stage1).to(config.device)
        stage1_dev = json.loads((best_stage1 / "metrics.json").read_text())["dev_accuracy"]
        print(f"reusing the stage-1 checkpoints in {checkpoints} (same model, data and stage-1 config)")
    else:
        model = new_model(config, data)
    tok = model.tokenizer
    dev = make_loader(data.dev, tok, config.stage1.batch_size, max_length)
    test = make_loader(data.test, tok, config.stage1.batch_size, max_length)
    if not reuse:
        for stale in checkpoints.glob("stage1-epoch*"):  # an earlier run's epochs must not enter the top-k
            shutil.rmtree(stale)
        train = make_loader(data.train, tok, config.stage1.batch_size, max_length, shuffle=True, seed=config.stage1.seed)
        stage1 = train_stage1(model, train, dev, config.stage1, checkpoint_saver(checkpoints), progress)
        stage1_dev = stage1.best_metrics["dev_accuracy"]
        (out / STAGE1_KEY).write_text(stage1_key)
    backbone_test = evaluate(model, test, removal="none", progress=progress, desc="test (backbone)")

    best = top_checkpoints(checkpoints, "stage1", config.saliency_checkpoints)
    saliency = saliency_from_checkpoints(best, data.train, max_length, device=config.device, progress=progress)

    if config.stage2.init == "pretrained":
        model = new_model(config, data)
    train = make_loader(
        data.train, tok, config.stage2.batch_size, max_length, shuffle=True, seed=config.stage2.seed, saliency=saliency
    )
    stage2 = train_stage2(model, train, dev, config.stage2, stage1_dev, checkpoint_saver(checkpoints), progress)
    dev_speedup = stage2.best_metrics["dev_flops_speedup"]
    again = f"adapler train --config {out / 'config.json'}"
    no_pruning = no_pruning_warning(
        dev_speedup, f"try `{again} --set stage2.epochs={config.stage2.epochs + 2} "
                     f"--set stage2.eta_lr={config.stage2.eta_lr * 4:g} --set stage2.phi={config.stage2.phi * 5:g}`",
    )
    tolerance = config.stage2.selection_tolerance
    accuracy_lost = tolerance_warning(
        select(epoch_candidates(stage2.history), stage1_dev, tolerance), stage1_dev, tolerance,
        f"try `{again} --set stage2.init=finetuned --set stage2.phi={config.stage2.phi * GENTLER_PHI:.2g}`",
    )
    adapler_test = evaluate(model, test, removal="packed", progress=progress, desc="test (AdapLeR)")
    model.save_pretrained(out / "model")
    result = RecipeResult(
        model_dir=out / "model",
        stage1_dev_accuracy=stage1_dev,
        backbone_test_accuracy=backbone_test.accuracy,
        adapler_test_accuracy=adapler_test.accuracy,
        flops_speedup=adapler_test.flops_speedup,
        dev_flops_speedup=dev_speedup,
        retention=adapler_test.retention,
        wall_seconds=time.perf_counter() - start,
        no_pruning=bool(no_pruning),
        within_tolerance=not accuracy_lost,
        warning=" ".join(w for w in (no_pruning, accuracy_lost) if w),
    )
    (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result
