"""The MLflow model registry: register, alias, promote, resolve ``models:/`` (no Ray needed).

- :func:`register_model` logs an AdapLeR directory as a pyfunc built from *code*
  (``pipelines/pyfunc_model.py``) with the directory as its one artefact, so the registry holds
  source files and safetensors, no pickled Python object. The ``adapler`` package is shipped in
  the model's ``code/`` folder, so the model also loads where adapler is not installed. The
  version is tagged with what it was measured on (data set, backbone, accuracies, FLOPs
  speedup, the fingerprint of the test split).
- :func:`promote` is MLflow's champion/challenger pattern: a new version of ``adapler run`` gets
  ``@challenger``; ``@champion`` moves to it too when the rule says so
  (:func:`adapler.selection.champion_verdict`: no warning, at least as accurate and as fast as
  the champion on the same test split, or ``mlflow.promote`` always).
- :func:`download_model_dir` turns ``name@alias`` into a checked local model directory (what
  :func:`adapler_pipelines.model_source.resolve_model` gives ``predict``, ``evaluate``,
  ``calibrate`` and Serve for a ``models:/`` URI).

Names come from :func:`adapler.artifacts.registered_model_name` (``adapler-<run name>``); the
directory rules from :func:`adapler.artifacts.check_model_dir`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, DataType, Map, ParamSchema, ParamSpec, Schema

from adapler.artifacts import (
    CHALLENGER,
    CHAMPION,
    check_model_dir,
    registered_model_name,
)
from adapler.run_result import backbone_name
from adapler.selection import champion_verdict
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.tracking import (
    STAGE_TAG,
    client_for,
    finite_metrics,
    log_config,
    log_files,
    run_experiment,
    setup_mlflow,
    tracking_uri,
)

PYFUNC_MODEL_PATH = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model_dir"  # key of the AdapLeR directory in the pyfunc's artefacts
RUNTIME_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "pyyaml",
    "mlflow",
    "onnx",
    "onnxruntime",
    "onnxscript",
)  # the pyfunc's default runtime is ONNX Runtime on CPU


class RegistryError(ValueError):
    """A registered model or alias that is not there (or not usable): one line for the user."""


def model_name(config: PipelineConfig) -> str:
    """``mlflow.registered_model``, else ``adapler-<run name>``."""
    return config.mlflow.registered_model or registered_model_name(config.name)


# --------------------------------------------------------------------------- what a version says
def dataset_description(config: PipelineConfig) -> str:
    data = config.data
    if data.source == "files":
        return f"files:{Path(data.train_file).name}" if data.train_file else "files"
    return f"{data.source}/{data.hub_config}" if data.hub_config else data.source


def _version_tags(config: PipelineConfig, metrics: Mapping[str, float]) -> dict[str, str]:
    tags = {"dataset": dataset_description(config), "backbone": backbone_name(config.model.backbone)}
    for key in ("dev_accuracy", "test_accuracy"):
        if key in metrics:
            tags[key] = str(float(metrics[key]))
    for key in ("flops_speedup", "dev_flops_speedup"):
        if key in metrics:
            tags["flops_speedup"] = str(float(metrics[key]))
            break
    return tags


def _description(tags: Mapping[str, str]) -> str:
    parts = []
    for key, label in (("dev_accuracy", "dev accuracy"), ("test_accuracy", "test accuracy")):
        if key in tags:
            parts.append(f"{label} {float(tags[key]):.4f}")
    if "flops_speedup" in tags:
        parts.append(f"FLOPs speedup {float(tags['flops_speedup']):.2f}x")
    head = f"AdapLeR ({tags.get('backbone', 'unknown backbone')}) on {tags.get('dataset', 'unknown data')}"
    return head + (": " + ", ".join(parts) if parts else "")


def _pip_requirements() -> list[str]:
    requirements = []
    for package in RUNTIME_PACKAGES:
        try:
            version = metadata.version(package).split("+", 1)[0]  # 2.13.0+cpu -> 2.13.0
        except metadata.PackageNotFoundError:
            requirements.append(package)
        else:
            requirements.append(f"{package}=={version}")
    return requirements


def _signature() -> ModelSignature:
    """Output schema and the params (the operating point) only: no MLflow 3.17 input schema takes
    both a list of str and a frame with text + text_pair (see pipelines/pyfunc_model.py); the
    pyfunc checks its input itself."""
    outputs = Schema(
        [
            ColSpec(DataType.string, "label"),
            ColSpec(DataType.long, "label_id"),
            ColSpec(Map(DataType.double), "probabilities"),
            ColSpec(DataType.long, "input_tokens"),
            ColSpec(DataType.long, "kept_tokens"),
            ColSpec(DataType.double, "flops_speedup"),
            ColSpec(DataType.string, "operating_point"),
            ColSpec(DataType.double, "eta_factor"),
        ]
    )
    params = ParamSchema(
        [  # the speed knob (adapler.operating_points): at most one
            ParamSpec("operating_point", DataType.string, None),
            ParamSpec("target_speedup", DataType.double, None),
            ParamSpec("factor", DataType.double, None),
        ]
    )
    return ModelSignature(inputs=None, outputs=outputs, params=params)


INPUT_EXAMPLE = pd.DataFrame(
    {
        "text": ["a gripping, beautifully acted film", "the plot never comes together"],
    }
)


# --------------------------------------------------------------------------- register
def register_model(
    model_dir: str | Path,
    config: PipelineConfig,
    metrics: Mapping[str, float],
    name: str = "",
    alias: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    artifacts: Mapping[str, str | Path] | None = None,
) -> tuple[str, str]:
    """Log ``model_dir`` as a models-from-code pyfunc and register it as a new version of
    ``name`` ("" = :func:`model_name`); point ``alias`` at it if given. Returns ``(name, version)``.

    The registration run (stage tag ``register``) holds the config (params, config.json),
    ``metrics``, ``artifacts`` (``{artefact path: local file}``, e.g. the operating points' curve)
    and the model, nested under ``parent_run_id`` (or the caller's active run). The
    version gets the tags dataset, backbone, dev_accuracy, test_accuracy, flops_speedup (those
    known), ``tags`` and a description.
    """
    import adapler

    directory = check_model_dir(model_dir)
    name = name or model_name(config)
    uri = setup_mlflow(config.mlflow)
    client = client_for(uri)
    experiment = run_experiment(client, config.mlflow, uri, parent_run_id)
    version_tags = {**_version_tags(config, metrics), **(tags or {})}
    with mlflow.start_run(
        run_name=f"register-{name}",
        experiment_id=experiment,
        parent_run_id=parent_run_id,
        nested=mlflow.active_run() is not None,
        tags={STAGE_TAG: "register"},
    ) as run:
        log_config(client, run.info.run_id, config)
        if metrics:
            mlflow.log_metrics(finite_metrics(metrics))
        log_files(client, run.info.run_id, artifacts or {})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_MODEL_PATH),
            artifacts={MODEL_ARTIFACT: str(directory)},
            code_paths=[str(Path(adapler.__file__).parent)],
            pip_requirements=_pip_requirements(),
            signature=_signature(),
            input_example=INPUT_EXAMPLE,
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=_description(version_tags))
    return name, version


# --------------------------------------------------------------------------- champion / challenger
@dataclass(frozen=True)
class Promotion:
    alias: str  # what the new version is now: CHAMPION or CHALLENGER
    reason: str  # one sentence, for the summary and the log


def promote(name: str, version: str, config: PipelineConfig, warning: str = "") -> Promotion:
    """Point ``@challenger`` at ``version`` of ``name``, and ``@champion`` too if it earns it under
    ``config.mlflow.promote`` (better | always | never). Under "better", a version whose run warned
    (``warning``: it removed nothing, or lost more than the tolerance on dev) stays a challenger,
    even where the name has no champion yet."""
    client = client_for(tracking_uri(config.mlflow))
    client.set_registered_model_alias(name, CHALLENGER, version)
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champion = None
    promoted, reason = champion_verdict(
        config.mlflow.promote,
        warning,
        client.get_model_version(name, version).tags,
        champion.tags if champion else None,
        str(champion.version) if champion else "",
        name,
    )
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        return Promotion(CHAMPION, f"version {version} is the new @champion: {reason}")
    return Promotion(
        CHALLENGER,
        f"version {version} is @challenger, @champion stays at version "
        f"{champion.version if champion else '-'}: {reason}; serve it with @challenger, "
        "or promote it by rerunning with --set mlflow.promote=always",
    )


# --------------------------------------------------------------------------- read back
def model_version(name: str, alias: str = CHAMPION, uri: str = ""):
    """The ModelVersion that ``name@alias`` points to; RegistryError for an unknown name or alias.
    ``uri`` "" = the default store (``$MLFLOW_TRACKING_URI``, else ./mlflow.db)."""
    uri = uri or tracking_uri()
    client = client_for(uri)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]
        raise RegistryError(f"no registered model {name!r} in {uri} (known: {known})") from None
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        aliases = sorted(getattr(registered, "aliases", {}) or {})
        raise RegistryError(f"registered model {name!r} has no alias {alias!r} (aliases: {aliases})") from None


def load_champion(name: str, alias: str = CHAMPION, uri: str = ""):
    """``mlflow.pyfunc.load_model`` of ``name@alias``, with a RegistryError for an unknown name or alias."""
    uri = uri or tracking_uri()
    version = model_version(name, alias, uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")


def download_model_dir(name: str, alias: str = CHAMPION, dst_path: str | Path | None = None, uri: str = "") -> str:
    """Download ``name@alias`` and return the local path of its AdapLeR directory (config.json,
    safetensors, tokenizer), for ``Predictor.from_directory``.

    Read it, do not write into it: without ``dst_path``, MLflow returns a store on local disk
    in place (no copy), so the path may be the registry's own folder; elsewhere it downloads to a
    new temporary directory. ``dst_path``: download a private copy there instead."""
    uri = uri or tracking_uri()
    version = model_version(name, alias, uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    if dst_path is not None:
        Path(dst_path).mkdir(parents=True, exist_ok=True)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version.version}",
            dst_path=None if dst_path is None else str(dst_path),
        )
    )
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    entry = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get(MODEL_ARTIFACT)
    if not entry:
        raise RegistryError(f"{name}@{alias} (version {version.version}) has no {MODEL_ARTIFACT!r} artefact")
    return str(check_model_dir(local / entry["path"]))
