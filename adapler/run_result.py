"""What a finished run reports: one record for ``adapler train`` and ``adapler run`` / ``tune``,
written to ``<run>/summary.json`` (:attr:`adapler.run_layout.RunLayout.summary`).

The recipe (no Ray) fills the measured part; the pipeline also fills the throughput, the
registration and the operating points (empty where a run has none).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from adapler.run_layout import RunLayout

PACKAGED_BACKBONE = "all-MiniLM-L6-v2 (packaged)"  # how results name the default backbone (model.backbone unset)


def backbone_name(backbone: str | None) -> str:
    """``model.backbone`` as results and registry tags name it."""
    return backbone or PACKAGED_BACKBONE


@dataclass
class RunResult:
    dataset: str
    backbone: str
    run_dir: str  # <output_dir>/<name>
    model_dir: str  # <run_dir>/model: the chosen model
    stage1_dev_accuracy: float
    backbone_test_accuracy: float
    adapler_test_accuracy: float
    flops_speedup: float  # on test, against the backbone at data.max_length
    dev_flops_speedup: float  # of the chosen model
    input_budget: int  # the chosen model's max_length (tokens); data.max_length or a searched shorter one
    backbone_input_budget: int  # data.max_length
    retention: list[float]  # on test: mean fraction of tokens entering each layer
    no_pruning: bool  # dev_flops_speedup under adapler.selection.NO_PRUNING_FLOOR
    # False: no trained model stayed within stage2.selection_tolerance of stage 1's dev accuracy;
    # the chosen one is the most accurate, less accurate than the backbone
    within_tolerance: bool
    warning: str  # adapler.selection.RunWarnings.text: one sentence per warning, with what to try next; else ""
    chosen: dict  # the chosen adapler.selection.Candidate (asdict)
    wall_seconds: float
    # the pipeline's: sorted-batch throughput on test, the registry, the operating points
    backbone_examples_per_s: float | None = None
    adapler_examples_per_s: float | None = None
    registered_model: str = ""
    version: str = ""
    alias: str = ""  # what the new version became: "champion" or "challenger"
    promotion: str = ""  # one sentence: which happened and why
    operating_points: dict | None = None  # the chosen model's (OperatingPoints.to_dict), None if not measured
    # the chosen point's paired evidence on dev (adapler.selection.Certificate.to_dict); None under the marginal rule
    certificate: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, layout: RunLayout) -> None:
        layout.summary.write_text(json.dumps(self.to_dict(), indent=2))

    def table(self) -> str:
        """The backbone against the chosen model, one row per figure (what `adapler run` prints)."""
        rows = [
            ("", "backbone (stage 1)", "AdapLeR (chosen)"),
            ("test accuracy", f"{self.backbone_test_accuracy:.4f}", f"{self.adapler_test_accuracy:.4f}"),
            ("input budget (tokens)", f"{self.backbone_input_budget}", f"{self.input_budget}"),
            ("FLOPs speedup", "1.00x", f"{self.flops_speedup:.2f}x"),
            ("eta factor (calibration)", "", f"{self.chosen['factor']:.3g}"),
        ]
        if self.backbone_examples_per_s is not None and self.adapler_examples_per_s is not None:
            rows.append(
                (
                    "examples/s (sorted batches)",
                    f"{self.backbone_examples_per_s:.1f}",
                    f"{self.adapler_examples_per_s:.1f}",
                )
            )
        return "\n".join(f"{a:<26}{b:>20}{c:>20}" for a, b, c in rows)
