"""The MLflow side of ``adapler calibrate`` (the search itself is :mod:`adapler.calibration`).

A model calibrated from ``models:/<name>@<alias>`` becomes a new version of the same registered
model:

- :func:`source_config` reads the config the source version was registered with (its
  registration run's ``config.json``), so the new version carries the same params, experiment,
  data set and backbone tags. Read it before the search: a source without one fails early.
- :func:`register_calibrated` logs one ``calibrate`` run (stage tag ``calibrate``): the config as
  params, the explored curve as metrics (one step per factor, by factor ascending: factor,
  dev_accuracy, dev_flops_speedup, examples_per_s) and as ``calibration/curve.csv`` and
  ``calibration/curve.png``. The registration run is nested under it. The version gets the
  usual tags (dev_accuracy, flops_speedup = the dev speedup, ...) plus calibration_factor,
  calibration_goal, calibration_data, calibrated_from (the source version) and
  dev_flops_speedup (explicit: ``adapler run`` versions tag the test speedup). No alias moves
  unless one is asked for: ``champion`` stays where it was.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from adapler.calibration import Calibration
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.registry import RegistryError, register_model
from adapler_pipelines.tracking import TrackingError, client_for, log_stage_run, read_run_config


def source_config(name: str, version: ModelVersion, uri: str) -> PipelineConfig:
    """The PipelineConfig that ``version`` of ``name`` was registered with, pointed at the store
    ``uri`` and the registered model ``name``."""
    try:
        config = read_run_config(uri, version.run_id)
    except TrackingError:
        raise RegistryError(
            f"{name} version {version.version} has no config.json in its registration run; "
            "calibrate a model directory instead (--model DIR)"
        ) from None
    config.mlflow.tracking_uri = uri
    config.mlflow.registered_model = name
    return config


def write_curve(calibration: Calibration, directory: Path) -> dict[str, Path]:
    """curve.csv (one row per factor tried) and curve.png (dev accuracy vs FLOPs speedup)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    directory.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([asdict(p) for p in calibration.points])
    table["chosen"] = table.factor == calibration.chosen.factor
    table.to_csv(directory / "curve.csv", index=False)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table.flops_speedup, table.accuracy, "o-", color="tab:blue", label="factors tried")
    for point in calibration.points:
        ax.annotate(f"{point.factor:.3g}", (point.flops_speedup, point.accuracy), fontsize=7,
                    textcoords="offset points", xytext=(3, 3))
    ax.scatter([calibration.baseline.flops_speedup], [calibration.baseline.accuracy], marker="s", s=60,
               color="gray", label="as trained (factor 1)", zorder=3)
    ax.scatter([calibration.chosen.flops_speedup], [calibration.chosen.accuracy], marker="*", s=250,
               color="tab:red", label=f"chosen (factor {calibration.chosen.factor:.3g})", zorder=4)
    if calibration.target_speedup is not None:
        ax.axvline(calibration.target_speedup, ls="--", color="gray", lw=1, label="target speedup")
    else:
        ax.axhline(calibration.baseline.accuracy - calibration.max_drop, ls="--", color="gray", lw=1,
                   label="accuracy floor")
    ax.set_xlabel("dev FLOPs speedup")
    ax.set_ylabel("dev accuracy")
    ax.set_title(f"threshold calibration ({calibration.goal})", fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "curve.png", dpi=120)
    plt.close(fig)
    return {"csv": directory / "curve.csv", "png": directory / "curve.png"}


def register_calibrated(
    model_dir: str | Path,
    calibration: Calibration,
    config: PipelineConfig,
    source_version: str,
    calibration_data: str,
    alias: str | None = None,
) -> str:
    """Log the calibration run and register ``model_dir`` (the calibrated model) as a new version
    of ``config.mlflow.registered_model``; point ``alias`` at it if given. Returns the version."""
    name, uri = config.mlflow.registered_model, config.mlflow.tracking_uri
    chosen, baseline = calibration.chosen, calibration.baseline
    tags = {
        "calibration_factor": f"{chosen.factor:.6g}",
        "calibration_goal": calibration.goal,
        "calibration_data": calibration_data,
        "calibrated_from": source_version,
        "dev_flops_speedup": str(chosen.flops_speedup),  # the flops_speedup tag of pipeline versions is on test
    }
    history = [
        {"factor": p.factor, "dev_accuracy": p.accuracy, "dev_flops_speedup": p.flops_speedup,
         "examples_per_s": p.examples_per_s}
        for p in calibration.points
    ]
    with tempfile.TemporaryDirectory() as tmp:
        files = write_curve(calibration, Path(tmp))
        run_id = log_stage_run(
            config, "calibrate", history, tags=tags,
            artifacts={"calibration/curve.csv": files["csv"], "calibration/curve.png": files["png"]},
        )
    metrics = {
        "dev_accuracy": chosen.accuracy, "dev_flops_speedup": chosen.flops_speedup,
        "calibration_factor": chosen.factor, "uncalibrated_dev_accuracy": baseline.accuracy,
        "uncalibrated_dev_flops_speedup": baseline.flops_speedup,
    }
    _, version = register_model(model_dir, config, metrics, name, alias=alias, parent_run_id=run_id, tags=tags)
    client = client_for(uri)
    description = client.get_model_version(name, version).description
    client.update_model_version(
        name, version,
        description=f"{description}; calibrated from version {source_version}: etas x {chosen.factor:.4g} "
                    f"({calibration.goal}, on {calibration_data})",
    )
    return version
