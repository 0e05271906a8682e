"""Stage-2 settings from one stage-1 model, as the search would meet them, read on dev and test.

The method alone (adapler/, no Ray; meant for a GPU). Stage 1 and its saliency labels run once,
then each ``--trial`` (stage-2 and input-budget overrides on top of the preset) trains stage 2
from the stage-1 model (the presets' ``stage2.init: finetuned``). Per trial it records every
epoch as trained (dev accuracy, dev accuracy with removal off, dev FLOPs speedup, and the same
model on test) and, as the pipeline's calibration in the loop does (pipelines/tune.py
``calibrate_front``), the epoch the selection rule picks calibrated on dev to its accuracy floor,
every factor measured then also read on test. Speedups are against the backbone at the preset's
``data.max_length``. Test figures are for reading the dev rule's choices, not for choosing.

Each ``--cut`` budget reads the stage-1 model (removal off) cut to that many tokens on train, dev
and test, beside its full-length reading: what truncation alone costs on each split.

    python bench/stage2_sweep.py rotten_tomatoes --set device=cuda --set stage2.epochs=2 \\
        --trial "stage2.lr=3e-5" --trial "stage2.lr=6e-5 stage2.phi=0.15" \\
        --trial "data.max_length=32 stage2.eta_lr=2e-3"
    python bench/stage2_sweep.py bbc_news --set data.limit=600 --set stage1.epochs=2 \\
        --cut 32 --cut 64 --cut 128 --output bench/results/cut_cost-bbc_news.json
Writes ``--output`` (default bench/results/stage2_sweep-<preset>.json) after each trial (the
committed Rotten Tomatoes sweep file holds two calls' results under "runs", merged by hand).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adapler.batching import make_loader
from adapler.calibration import calibrate, scaled_etas
from adapler.config import ConfigError, apply_overrides, load_config, parse_overrides
from adapler.evaluate import budget_gain, evaluate
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.data import load_data
from adapler.recipe import checkpoint_saver, new_model, top_checkpoints
from adapler.saliency import saliency_from_checkpoints
from adapler.selection import Candidate, accuracy_floor, select
from adapler.training import train_stage1, train_stage2
from adapler_cli.errors import UserError
from adapler.config import resolve_preset
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.tune import resolve_budgets

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="preset name or YAML file (configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for stage 1 and every trial")
    parser.add_argument("--trial", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="one stage-2 run: overrides separated by spaces (data.max_length: its input budget)")
    parser.add_argument("--cut", action="append", default=[], type=int, metavar="TOKENS",
                        help="read the stage-1 model cut to TOKENS on every split (removal off)")
    parser.add_argument("--output", type=Path, help="default: bench/results/stage2_sweep-<preset>.json")
    args = parser.parse_args()
    if not args.trial and not args.cut:
        parser.error("nothing to do: give at least one --trial or --cut")
    try:  # every bad preset, override, trial or budget stops here, before stage 1 trains
        config = load_config(resolve_preset(args.preset), ["output_dir=runs/stage2_sweep", *args.set], cls=PipelineConfig)
        trials = {trial: apply_overrides(config, parse_overrides(trial.split())) for trial in args.trial}
        if args.cut:
            resolve_budgets(apply_overrides(config, {"tune.max_lengths": args.cut}), tokenizer=None)
    except (ConfigError, UserError) as error:
        parser.error(str(error))
    output = args.output or HERE / "results" / f"stage2_sweep-{Path(args.preset).stem}.json"
    start = time.perf_counter()
    data = load_data(config)
    full = config.data.max_length
    checkpoints = config.run_dir / "checkpoints"

    model = new_model(config, data)
    dev = make_loader(data.dev, model.tokenizer, config.stage1.batch_size, full)
    train = make_loader(data.train, model.tokenizer, config.stage1.batch_size, full, shuffle=True, seed=config.stage1.seed)
    stage1 = train_stage1(model, train, dev, config.stage1, checkpoint_saver(checkpoints))
    reference = stage1.best_metrics["dev_accuracy"]
    test = make_loader(data.test, model.tokenizer, config.stage1.batch_size, full)
    result = {"preset": args.preset, "overrides": args.set, "stage1_dev_accuracy": reference,
              "backbone_test_accuracy": evaluate(model, test, removal="none").accuracy, "records": []}
    print(f"stage 1: dev {reference:.4f}, test {result['backbone_test_accuracy']:.4f}", flush=True)
    best = top_checkpoints(checkpoints, "stage1", config.saliency_checkpoints)
    saliency = {}
    if args.cut:  # the best stage-1 checkpoint: the model every trial starts from
        model = AdapLeRForSequenceClassification.from_pretrained(best[0]).to(config.device)
        result["cut_accuracy"] = {str(budget): cut_accuracy(model, data, config.stage1.batch_size, budget)
                                  for budget in sorted({full, *args.cut})}
        result["seconds"] = time.perf_counter() - start
        print(json.dumps(result["cut_accuracy"]), flush=True)
        output.write_text(json.dumps(result, indent=2) + "\n")

    for trial, trial_config in trials.items():
        budget, stage2 = trial_config.data.max_length, trial_config.stage2
        if budget not in saliency:
            saliency[budget] = saliency_from_checkpoints(best, data.train, budget, device=config.device, progress=True)
        model = AdapLeRForSequenceClassification.from_pretrained(best[0]).to(config.device)
        model.tokenizer.model_max_length = budget
        tok = model.tokenizer
        train = make_loader(data.train, tok, stage2.batch_size, budget, shuffle=True, seed=stage2.seed,
                            saliency=saliency[budget])
        dev = make_loader(data.dev, tok, stage2.batch_size, budget)
        test = make_loader(data.test, tok, stage2.batch_size, budget)
        dev_gain, test_gain = budget_gain(model, data.dev, full, budget), budget_gain(model, data.test, full, budget)
        states = []
        run = train_stage2(model, train, dev, stage2, reference, on_epoch=lambda report: states.append(
            {k: v.detach().clone() for k, v in report.model.state_dict().items()}))

        def record(epoch: int, factor: float, dev_accuracy: float, dev_speedup: float, unpruned: float) -> None:
            with scaled_etas(model, factor):
                on_test = evaluate(model, test, removal="packed")
            row = {"trial": trial, "epoch": epoch, "factor": factor, "dev_accuracy": dev_accuracy,
                   "dev_flops_speedup": dev_speedup, "dev_unpruned_accuracy": unpruned,
                   "test_accuracy": on_test.accuracy, "test_flops_speedup": on_test.flops_speedup * test_gain}
            result["records"].append(row)
            print(json.dumps(row), flush=True)

        epochs = []
        for epoch, (state, metrics) in enumerate(zip(states, run.history)):
            model.load_state_dict(state)
            candidate = Candidate(trial, epoch, metrics["dev_accuracy"], metrics["dev_flops_speedup"] * dev_gain,
                                  unpruned_accuracy=evaluate(model, dev, removal="none").accuracy)
            epochs.append(candidate)
            record(epoch, 1.0, candidate.dev_accuracy, candidate.dev_flops_speedup, candidate.unpruned_accuracy)
        pick = select(epochs, reference, stage2.selection_tolerance).chosen
        model.load_state_dict(states[pick.epoch])
        floor = accuracy_floor(pick, reference, stage2.selection_tolerance)
        for point in calibrate(model, dev, min_accuracy=floor, flops_gain=dev_gain).points:
            if point.factor != 1.0:
                record(pick.epoch, point.factor, point.accuracy, point.flops_speedup, pick.unpruned_accuracy)
        result["seconds"] = time.perf_counter() - start
        output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


def cut_accuracy(model, data, batch_size: int, budget: int) -> dict[str, float]:
    """Accuracy with removal off of ``model`` on each split's texts cut to ``budget`` tokens."""
    return {split: evaluate(model, make_loader(data.split(split), model.tokenizer, batch_size, budget),
                            removal="none", progress=True, desc=f"{split} at {budget} tokens").accuracy
            for split in ("train", "dev", "test")}


if __name__ == "__main__":
    main()
