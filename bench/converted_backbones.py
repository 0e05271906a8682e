"""Two more families on trained weights: the packaged MiniLM mapped into the DistilBERT and ELECTRA
layouts (adapler.backbones.convert), checked to compute what the BERT original computes, then
`adapler demo` on each mapped checkpoint, beside the original.

    python bench/converted_backbones.py                              # both layouts and the original
    python bench/converted_backbones.py --layouts distilbert --skip-original

Per layout: the largest difference between the mapped encoder's last hidden states and the
original's on the demo's first test articles (the conversion's own check, here on real text), and
the demo's outcome (its summary.json: backbone and chosen model's test accuracy, FLOPs speedup,
input budget). Each demo runs in its own directory under bench/.cache/converted (its runs/ and
mlflow.db). Writes bench/results/converted_backbones.json: one record per layout ("bert": the
packaged checkpoint as it ships), replacing the layouts it ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from adapler.backbones.convert import LAYOUTS, convert_bert
from adapler.config import default_backbone
from adapler.data import load_splits
from harness import CACHE, RESULTS

WORK = CACHE / "converted"


@torch.no_grad()
def hidden_state_gap(source: str, mapped: Path, texts: list[str], max_length: int) -> float:
    """max |mapped - original| over the last hidden states of ``texts`` (one segment each)."""
    states = []
    for directory in (source, mapped):  # each with its own tokenizer (DistilBERT's takes no token types)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        states.append(AutoModel.from_pretrained(directory).eval()(**batch).last_hidden_state)
    mask = batch["attention_mask"].bool()
    return float((states[1] - states[0])[mask].abs().max())


def run_demo(layout: str, backbone: str) -> dict:
    """`adapler demo` on ``backbone`` in a directory of its own; its summary.json."""
    directory = WORK / f"demo-{layout}"
    directory.mkdir(parents=True, exist_ok=True)
    command = [
        str(Path(sys.executable).parent / "adapler"),
        "demo",
        "--set",
        f"model.backbone={backbone}",
        "--set",
        f"name=demo-{layout}",
        "--set",
        f"mlflow.registered_model=adapler-demo-{layout}",
    ]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=directory, check=True)
    return json.loads((directory / "runs" / f"demo-{layout}" / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--skip-original", action="store_true", help="do not run the demo on the BERT original")
    parser.add_argument("--output", type=Path, default=RESULTS / "converted_backbones.json")
    args = parser.parse_args()
    source = default_backbone()
    texts = load_splits("bbc_news", limit=600).test["text"].tolist()[:16]
    records = []
    for layout in args.layouts:
        mapped = convert_bert(source, WORK / f"minilm-{layout}", layout)
        gap = hidden_state_gap(source, mapped, texts, 128)
        print(f"{layout}: largest hidden-state difference from the original {gap:.2e}", flush=True)
        records.append({"layout": layout, "hidden_state_max_abs_diff": gap, **_outcome(run_demo(layout, str(mapped)))})
    if not args.skip_original:
        records.append({"layout": "bert", "hidden_state_max_abs_diff": 0.0, **_outcome(run_demo("bert", source))})
    kept = json.loads(args.output.read_text()) if args.output.is_file() else []
    ran = {r["layout"] for r in records}
    args.output.write_text(json.dumps([r for r in kept if r["layout"] not in ran] + records, indent=2) + "\n")
    for record in records:
        print(json.dumps(record), flush=True)
    print(f"wrote {args.output}")


def _outcome(summary: dict) -> dict:
    keys = (
        "backbone_test_accuracy",
        "adapler_test_accuracy",
        "flops_speedup",
        "input_budget",
        "within_tolerance",
        "no_pruning",
        "wall_seconds",
    )
    return {key: summary[key] for key in keys}


if __name__ == "__main__":
    main()
