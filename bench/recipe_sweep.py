"""The method alone (adapler/recipe.py, no Ray) on a preset's full data, for several stage-2 phi.

Stage 1 runs once (the recipe reuses its checkpoints while the stage-1 settings match); each phi
is then saliency -> stage 2 (init from the fine-tuned model) -> test. Meant for a GPU: where to
put the Tune search's phi range for a data set, in minutes.

    python bench/recipe_sweep.py rotten_tomatoes --phis 0.001 0.003 0.01 0.02 0.04 --set device=cuda
    python bench/recipe_sweep.py bbc_news --phis 0.0003 0.001 0.003 0.01 --set device=cuda
Writes bench/results/recipe_sweep-<preset>.json (one record per phi).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from adapler.config import load_config
from adapler.recipe import run_recipe
from adapler.config import resolve_preset
from adapler_pipelines.config import PipelineConfig

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", help="preset name or YAML file (configs/)")
    parser.add_argument("--phis", nargs="+", type=float, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    output = HERE / "results" / f"recipe_sweep-{Path(args.preset).stem}.json"
    records = []
    for phi in args.phis:
        start = time.perf_counter()
        overrides = ["output_dir=runs/sweep", "stage2.init=finetuned", "stage2.length_unit=tokens", *args.set,
                     f"stage2.phi={phi}"]  # --phis in absolute tokens, as the records were measured
        result = run_recipe(load_config(resolve_preset(args.preset), overrides, cls=PipelineConfig), progress=False)
        record = {"preset": args.preset, "phi": phi, "overrides": args.set, **result.to_dict(),
                  "seconds": time.perf_counter() - start}
        print(json.dumps(record), flush=True)
        records.append(record)
        output.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
