"""Where a run keeps what it makes: the one layout of ``<output_dir>/<name>/``.

``adapler train`` (the recipe, no Ray), ``adapler run`` / ``tune`` / ``demo`` (the pipeline),
the CLI's next commands and the benchmarks all name these paths through :class:`RunLayout`:

    <run>/config.json          the resolved config the run was started with
    <run>/stage1.json          the stage-1 outcome a rerun or `adapler tune` reuses (adapler.stage1_record)
    <run>/checkpoints/         the recipe's epochs: <stage>-epoch<k>/{model/, metrics.json}
    <run>/saliency/            the pipeline's saliency labels (parquet), local storage
    <run>/model/               the chosen model (what `adapler predict --model runs/<name>` loads)
    <run>/report/              pareto.{csv,png}, retention.png, highlight.html, operating_points/
    <run>/summary.json         the run's result (adapler.run_result.RunResult)

Plain Python: paths only, nothing is created here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapler.artifacts import CONFIG_FILE, RUN_MODEL_SUBDIR

REPORT_DIR = "report"  # also the run's MLflow artefact folder of the same files
CHECKPOINT_MODEL_SUBDIR = "model"  # inside every checkpoint (recipe or Ray Train): an AdapLeR directory
CALIBRATED_MODEL_SUBDIR = "model-calibrated"  # where the printed `adapler calibrate` command saves


def checkpoint_model_dir(checkpoint: str | Path) -> str:
    """The AdapLeR model directory inside a checkpoint location (a local path or a URI such as
    s3://...; ``Path`` would fold ``s3://`` to ``s3:/``)."""
    return f"{str(checkpoint).rstrip('/')}/{CHECKPOINT_MODEL_SUBDIR}"


@dataclass(frozen=True)
class RunLayout:
    root: Path  # <output_dir>/<name>

    @classmethod
    def of(cls, config) -> RunLayout:
        """The layout of ``config.run_dir`` (any ExperimentConfig)."""
        return cls(Path(config.run_dir))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def stage1(self) -> Path:
        return self.root / "stage1.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def saliency(self) -> Path:
        return self.root / "saliency"

    @property
    def model(self) -> Path:
        return self.root / RUN_MODEL_SUBDIR

    @property
    def calibrated_model(self) -> Path:
        return self.root / CALIBRATED_MODEL_SUBDIR

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def operating_points(self) -> Path:
        return self.report / "operating_points"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"
