"""The stage-1 outcome a run leaves at ``<run>/stage1.json``, and the one rule for reusing it.

Stage 1 (fine-tuning the backbone) is the longest part of a run and the same for every stage-2
setting. A run writes which checkpoints it kept (best first, the ones its saliency labels average
over), their dev accuracies, where the labels are, and the config it trained with. A later run
reuses them instead of training again when that config is the same (:func:`reusable_stage1`):
``adapler train`` reruns, the benchmarks' ``reuse_stage1``; ``adapler tune`` always reuses them
(:func:`read_stage1`, it exists to search stage 2 again).

Plain Python: checkpoint locations are local paths or URIs (s3://...), never opened here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from adapler.config import ExperimentConfig, config_to_dict
from adapler.run_layout import RunLayout, checkpoint_model_dir

# What stage 1's checkpoints and saliency labels depend on: a rerun with all of them equal reuses them.
STAGE1_SECTIONS = ("model", "data", "stage1", "saliency_checkpoints")


class Stage1Missing(FileNotFoundError):
    """`adapler tune` without the stage-1 results of an earlier `adapler run` (one line)."""


def trained_with(config: ExperimentConfig) -> dict:
    """The config values stage 1's outcome depends on (:data:`STAGE1_SECTIONS`)."""
    values = config_to_dict(config)
    return {key: values[key] for key in STAGE1_SECTIONS}


@dataclass
class Stage1Record:
    checkpoints: list[dict]  # {"path" (a location: local or URI), "epoch", "dev_accuracy"}, best first
    saliency_path: str = ""  # a location; "" where the labels were not kept (the recipe recomputes them)
    trained_with: dict = field(default_factory=dict)  # trained_with(config) of the run that made it

    @property
    def reference(self) -> float:
        """The best stage-1 dev accuracy: what stage 2's selection measures against."""
        return self.checkpoints[0]["dev_accuracy"]

    @property
    def best_model_dir(self) -> str:
        return checkpoint_model_dir(self.checkpoints[0]["path"])

    @property
    def model_dirs(self) -> list[str]:
        return [checkpoint_model_dir(c["path"]) for c in self.checkpoints]

    def matches(self, config: ExperimentConfig) -> bool:
        return self.trained_with == json.loads(json.dumps(trained_with(config)))

    def write(self, layout: RunLayout) -> None:
        layout.stage1.write_text(json.dumps(asdict(self), indent=2))


def read_stage1(layout: RunLayout) -> Stage1Record:
    """The record at ``layout.stage1``; Stage1Missing (one line) when there is none."""
    if not layout.stage1.is_file():
        raise Stage1Missing(f"no stage-1 results at {layout.stage1}: run `adapler run` first (same --config and name)")
    return Stage1Record(**json.loads(layout.stage1.read_text()))


def reusable_stage1(layout: RunLayout, config: ExperimentConfig) -> Stage1Record | None:
    """The record at ``layout.stage1`` when ``config`` trains stage 1 exactly as it was trained
    (:data:`STAGE1_SECTIONS`), else None; says which on stdout."""
    record = read_stage1(layout) if layout.stage1.is_file() else None
    if record is None:
        print(f"no {layout.stage1} to reuse yet: training stage 1")
    elif not record.matches(config):
        print(f"{layout.stage1} was trained with another model, data or stage-1 config: training stage 1 again")
        record = None
    else:
        print(
            f"reusing the stage-1 checkpoints and saliency labels of {layout.root} (same model, data and stage-1 "
            "config)"
        )
    return record
