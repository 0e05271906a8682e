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
- :func:`register_with_points` does the same for ``adapler calibrate --points``: same weights,
  the operating points in config.json, the curve as ``operating_points/curve.{csv,png}``, the
  points as tags (:func:`points_tags`: ``operating_points``, ``point.<name>.factor``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from adapler.calibration import Calibration
from adapler.operating_points import CurvePoint, OperatingPoints
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


def _write_curve(
    curve: Sequence[CurvePoint],
    column: tuple[str, list],
    marks: Sequence[tuple[str, CurvePoint, str, str, int]],
    title: str,
    directory: Path,
    guide: Callable | None = None,
) -> dict[str, Path]:
    """curve.csv (one row per factor, plus ``column`` = (name, values)) and curve.png (dev accuracy
    vs FLOPs speedup, each factor annotated; ``marks``: (label, point, marker, colour, size))."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    directory.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame([asdict(p) for p in curve])
    table[column[0]] = column[1]
    table.to_csv(directory / "curve.csv", index=False)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(table.flops_speedup, table.accuracy, "o-", color="tab:blue", label="factors tried")
    for point in curve:
        ax.annotate(
            f"{point.factor:.3g}",
            (point.flops_speedup, point.accuracy),
            fontsize=7,
            textcoords="offset points",
            xytext=(3, 3),
        )
    for order, (label, point, marker, colour, size) in enumerate(marks):
        ax.scatter(
            [point.flops_speedup], [point.accuracy], marker=marker, s=size, color=colour, label=label, zorder=3 + order
        )
    if guide is not None:
        guide(ax)
    ax.set_xlabel("dev FLOPs speedup")
    ax.set_ylabel("dev accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(directory / "curve.png", dpi=120)
    plt.close(fig)
    return {"csv": directory / "curve.csv", "png": directory / "curve.png"}


def write_curve(calibration: Calibration, directory: Path) -> dict[str, Path]:
    """curve.csv (one row per factor tried, ``chosen`` flagged) and curve.png (dev accuracy vs FLOPs speedup)."""
    chosen, baseline = calibration.chosen, calibration.baseline

    def guide(ax) -> None:
        if calibration.target_speedup is not None:
            ax.axvline(calibration.target_speedup, ls="--", color="gray", lw=1, label="target speedup")
        else:
            ax.axhline(baseline.accuracy - calibration.max_drop, ls="--", color="gray", lw=1, label="accuracy floor")

    marks = [
        ("as trained (factor 1)", baseline, "s", "gray", 60),
        (f"chosen (factor {chosen.factor:.3g})", chosen, "*", "tab:red", 250),
    ]
    return _write_curve(
        calibration.points,
        ("chosen", [p.factor == chosen.factor for p in calibration.points]),
        marks,
        f"threshold calibration ({calibration.goal})",
        directory,
        guide,
    )


POINT_STYLE = {"accurate": ("s", "tab:green"), "balanced": ("D", "tab:orange"), "fast": ("*", "tab:red")}


def write_points_curve(points: OperatingPoints, directory: Path) -> dict[str, Path]:
    """curve.csv (one row per factor measured, ``point`` = the names at that factor) and curve.png."""
    names: dict[float, str] = {}  # several names may share a factor: "balanced/fast"
    for name, factor in points.named.items():
        names[factor] = f"{names[factor]}/{name}" if factor in names else name
    on_curve = {p.factor: p for p in points.curve}
    marks = [
        (f"{name} (factor {factor:.3g})", on_curve[factor], *POINT_STYLE.get(name, ("o", "black")), 120)
        for name, factor in points.named.items()
    ]
    budgets = ", ".join(f"{name} {getattr(points.budgets, name):g}" for name in points.named)
    return _write_curve(
        points.curve,
        ("point", [names.get(p.factor, "") for p in points.curve]),
        marks,
        f"operating points (accuracy budgets: {budgets})",
        directory,
    )


def points_tags(points: OperatingPoints) -> dict[str, str]:
    """Version tags: ``operating_points`` (one line: each name with its factor and dev figures) and
    ``point.<name>.factor``."""
    return {"operating_points": points.describe(), **{f"point.{n}.factor": f"{f:.6g}" for n, f in points.named.items()}}


def _register_from(
    model_dir: str | Path,
    config: PipelineConfig,
    source_version: str,
    history: list[dict],
    tags: Mapping[str, str],
    artifacts: Mapping[str, Path],
    metrics: Mapping[str, float],
    note: tuple[str, str],
    alias: str | None,
) -> str:
    """Log one ``calibrate`` run (``history`` as metrics, ``artifacts``) and register ``model_dir``
    nested under it as a new version of ``config.mlflow.registered_model``, whose description ends
    with "<what> from version <source>: <detail>" (``note`` = (what, detail)); point ``alias`` at
    it if given. Returns the version."""
    name, uri = config.mlflow.registered_model, config.mlflow.tracking_uri
    run_id = log_stage_run(config, "calibrate", history, tags=tags, artifacts=artifacts)
    _, version = register_model(model_dir, config, metrics, name, alias=alias, parent_run_id=run_id, tags=tags)
    client = client_for(uri)
    description = client.get_model_version(name, version).description
    what, detail = note
    client.update_model_version(
        name, version, description=f"{description}; {what} from version {source_version}: {detail}"
    )
    return version


def _history(curve: Sequence[CurvePoint]) -> list[dict]:
    return [
        {
            "factor": p.factor,
            "dev_accuracy": p.accuracy,
            "dev_flops_speedup": p.flops_speedup,
            "examples_per_s": p.examples_per_s,
        }
        for p in curve
    ]


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
    chosen, baseline = calibration.chosen, calibration.baseline
    tags = {
        "calibration_factor": f"{chosen.factor:.6g}",
        "calibration_goal": calibration.goal,
        "calibration_data": calibration_data,
        "calibrated_from": source_version,
        "dev_flops_speedup": str(chosen.flops_speedup),  # the flops_speedup tag of pipeline versions is on test
    }
    metrics = {
        "dev_accuracy": chosen.accuracy,
        "dev_flops_speedup": chosen.flops_speedup,
        "calibration_factor": chosen.factor,
        "uncalibrated_dev_accuracy": baseline.accuracy,
        "uncalibrated_dev_flops_speedup": baseline.flops_speedup,
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = write_curve(calibration, Path(tmp))
        artifacts = {"calibration/curve.csv": files["csv"], "calibration/curve.png": files["png"]}
        return _register_from(
            model_dir,
            config,
            source_version,
            _history(calibration.points),
            tags,
            artifacts,
            metrics,
            ("calibrated", f"etas x {chosen.factor:.4g} ({calibration.goal}, on {calibration_data})"),
            alias,
        )


def register_with_points(
    model_dir: str | Path,
    points: OperatingPoints,
    config: PipelineConfig,
    source_version: str,
    alias: str | None = None,
) -> str:
    """Register ``model_dir`` (the source's weights, its config.json holding ``points``) as a new
    version, with the curve as ``operating_points/curve.{csv,png}`` of its calibrate run."""
    tags = {**points_tags(points), "calibration_data": points.data, "calibrated_from": source_version}
    default = points.point("default")
    metrics = {
        f"{name}_{key}": value
        for name in points.named
        for key, value in (
            ("dev_accuracy", points.point(name).dev_accuracy),
            ("dev_flops_speedup", points.point(name).dev_flops_speedup),
        )
    }
    metrics.update(dev_accuracy=default.dev_accuracy, dev_flops_speedup=default.dev_flops_speedup)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_points_curve(points, Path(tmp))
        artifacts = {"operating_points/curve.csv": files["csv"], "operating_points/curve.png": files["png"]}
        return _register_from(
            model_dir,
            config,
            source_version,
            _history(points.curve),
            tags,
            artifacts,
            metrics,
            ("operating points added", f"{tags['operating_points']} (on {points.data})"),
            alias,
        )
