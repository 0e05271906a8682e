"""MLflow: one run per stage or trial, and the model registry (no Ray needed).

- :func:`setup_mlflow` points MLflow at the configured store (``mlflow.tracking_uri``, else
  ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs ./mlflow.db>``); for a SQLite store the
  artefacts go to ``mlartifacts/`` next to the database file, never into the working directory.
- :func:`log_stage_run` records a stage (stage 1, a stage-2 trial, ...): the resolved config as
  params and as ``config.json``, the per-epoch metrics (step = epoch, 0-based like the training
  loop) and any files. It uses the client API only (no fluent "active run"), so Ray workers and
  threads can call it side by side; ``parent_run_id`` nests the run under the driver's run.
- :func:`register_model` logs an AdapLeR directory as a pyfunc built from *code*
  (``pipelines/pyfunc_model.py``) with the directory as its one artefact, so the registry holds
  source files and safetensors, no pickled Python object. The ``adapler`` package is shipped in
  the model's ``code/`` folder, so the model also loads where adapler is not installed.
- :func:`load_champion` / :func:`download_model_dir` read it back; the Serve deployment loads the
  downloaded directory with ``Predictor.from_directory`` (safetensors, not pickle).

Processes that do not share the driver's working directory (Ray Tune trials change theirs)
should get an absolute URI: resolve it once with :func:`tracking_uri` and put it in the config.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, DataType, Map, Schema

from adapler.config import config_to_dict
from adapler_pipelines.config import MlflowConfig

PYFUNC_MODEL_PATH = Path(__file__).with_name("pyfunc_model.py")
MODEL_ARTIFACT = "model_dir"  # key of the AdapLeR directory in the pyfunc's artefacts
# Files that hold (or may hold) pickles; an AdapLeR directory needs none of them.
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin", ".pt", ".pth", ".ckpt", ".joblib")
VERSION_TAGS = ("dataset", "backbone", "dev_accuracy", "test_accuracy", "flops_speedup")
PACKAGED_BACKBONE = "all-MiniLM-L6-v2 (packaged)"
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pandas", "pyyaml", "mlflow")

_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
_MAX_KEY = 250  # ... and on a param / metric key
_BATCH = 100  # params per log_batch call
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- ]")  # MLflow keys: alphanumerics, _ - . / space (and : off Windows)

_current_uri: str | None = None  # set by setup_mlflow: what later reads in this process use


class RegistryError(ValueError):
    """A registered model, alias or model directory that is not there (or not usable)."""


# --------------------------------------------------------------------------- store and experiment
def _mlflow_section(config: Any) -> MlflowConfig:
    if isinstance(config, MlflowConfig):
        return config
    section = getattr(config, "mlflow", None)
    return section if isinstance(section, MlflowConfig) else MlflowConfig()


def tracking_uri(config: MlflowConfig | None = None) -> str:
    """The config's URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs path of ./mlflow.db>``.

    A relative SQLite path is made absolute here, so the URI means the same store in processes
    with another working directory (Ray Tune trials run in their trial folder).
    """
    value = (config.tracking_uri if config is not None else "") or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not value:
        return f"sqlite:///{Path('mlflow.db').resolve()}"
    db = _sqlite_path(value)
    if db is not None and not value[len("sqlite:///"):].startswith("/"):
        query = value.split("?", 1)[1] if "?" in value else ""
        return f"sqlite:///{db}" + (f"?{query}" if query else "")
    return value


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _artifact_location(uri: str) -> str | None:
    """Artefacts of a SQLite store live next to the database (``mlartifacts/``); a server decides
    for itself (None). MLflow's own default would be a folder in the current working directory."""
    db = _sqlite_path(uri)
    return str(db.parent / "mlartifacts") if db is not None else None


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except MlflowException:  # created by another process in between
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def _run_experiment(client: MlflowClient, section: MlflowConfig, uri: str, parent_run_id: str | None) -> str:
    """The experiment of a new run: its parent's, else the configured one (created if missing)."""
    if not parent_run_id:
        return _experiment_id(client, section.experiment, uri)
    try:
        return client.get_run(parent_run_id).info.experiment_id
    except MlflowException as err:
        raise RegistryError(f"parent run {parent_run_id!r} not found in {uri}: {err.message}") from None


def setup_mlflow(config: MlflowConfig | Any | None = None) -> None:
    """Set MLflow's tracking and registry URI and its experiment (created with its artefacts next
    to a SQLite database). Accepts the MlflowConfig or a config that has an ``mlflow`` section."""
    global _current_uri
    section = _mlflow_section(config)
    uri = tracking_uri(section)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    _experiment_id(_client(uri), section.experiment, uri)
    mlflow.set_experiment(section.experiment)
    _current_uri = uri


def _read_uri(uri: str | None) -> str:
    """For reads: the given URI, else the one setup_mlflow chose, else the project default."""
    return uri or _current_uri or tracking_uri(None)


# --------------------------------------------------------------------------- params and runs
def _param_key(key: str) -> str:
    return _INVALID_KEY_CHARS.sub("_", key)[:_MAX_KEY]


def _param_value(value: Any) -> str:
    if value is None or isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    if len(text) > _MAX_PARAM_VALUE:
        text = text[: _MAX_PARAM_VALUE - 3] + "..."
    return text


def _config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    return dict(config) if isinstance(config, Mapping) else config_to_dict(config)


def flatten_config(config: Any) -> dict[str, str]:
    """Dotted keys (``stage2.phi``) -> str values (lists and None as JSON), ready for log_params.

    Takes a config dataclass (or its dict). Keys are cut to MLflow's charset and 250 characters,
    values to its 6000-character limit.
    """
    tree = _config_dict(config)
    flat: dict[str, str] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, f"{dotted}.")
            else:
                flat[_param_key(dotted)] = _param_value(value)

    walk(tree, "")
    return flat


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def _metric_key(key: str) -> str:
    return _param_key(str(key))


def _history_metrics(history: list[Mapping[str, float]]) -> list[Metric]:
    """One metric per (name, epoch); step = the entry's ``epoch`` if it has one, else its index."""
    import time

    now = int(time.time() * 1000)
    metrics = []
    for index, entry in enumerate(history):
        step = int(entry["epoch"]) if "epoch" in entry else index
        for key, value in entry.items():
            if key == "epoch":
                continue
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise TypeError(f"history[{index}][{key!r}] = {value!r} is not a number") from None
            metrics.append(Metric(_metric_key(key), number, now, step))
    return metrics


def _log_files(client: MlflowClient, run_id: str, artifacts: Mapping[str, str | Path]) -> None:
    """``{artefact path: local path}``: a file is stored under exactly that path, a directory's
    contents under that folder."""
    for name, local in artifacts.items():
        local = Path(local)
        if local.is_dir():
            client.log_artifacts(run_id, str(local), artifact_path=name)
        else:
            target = Path(name)
            with tempfile.TemporaryDirectory() as tmp:
                staged = Path(tmp) / target.name
                shutil.copyfile(local, staged)
                parent = str(target.parent) if str(target.parent) != "." else None
                client.log_artifact(run_id, str(staged), artifact_path=parent)


def log_stage_run(
    config: Any,
    stage: str,
    history: list[Mapping[str, float]],
    artifacts: Mapping[str, str | Path] | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """One finished MLflow run for a stage or a trial; returns its run id.

    params = the resolved config (dotted keys), metrics = ``history`` (one dict per epoch,
    step = epoch), artefacts = ``config.json`` plus ``artifacts`` (``{artefact path: local
    path}``). With ``parent_run_id`` the run is nested under that run, in its experiment.
    """
    for name, local in (artifacts or {}).items():
        if not Path(local).exists():
            raise FileNotFoundError(f"artefact {name!r}: {local} does not exist")
    section = _mlflow_section(config)
    uri = tracking_uri(section)
    client = _client(uri)
    experiment_id = _run_experiment(client, section, uri, parent_run_id)
    run_tags = {"adapler.stage": stage, **{str(k): str(v) for k, v in (tags or {}).items()}}
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    name = getattr(config, "name", None)
    run = client.create_run(experiment_id, run_name=f"{name}-{stage}" if name else stage, tags=run_tags)
    run_id = run.info.run_id
    try:
        _log_params(client, run_id, flatten_config(config))
        metrics = _history_metrics(list(history))
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.log_text(run_id, json.dumps(_config_dict(config), indent=2, default=str), "config.json")
        _log_files(client, run_id, artifacts or {})
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


# --------------------------------------------------------------------------- registry
def registered_model_name(config: Any) -> str:
    """``mlflow.registered_model``, else ``adapler-<data set>``."""
    section = _mlflow_section(config)
    if section.registered_model:
        return section.registered_model
    data = getattr(config, "data", None)
    source = getattr(data, "source", "model") if data is not None else "model"
    return "adapler-" + re.sub(r"[^\w.-]+", "-", str(source)).strip("-")


def _dataset(config: Any) -> str | None:
    data = getattr(config, "data", None)
    if data is None:
        return None
    if data.source == "files":
        return f"files:{Path(data.train_file).name}" if data.train_file else "files"
    return f"{data.source}/{data.hub_config}" if data.hub_config else data.source


def _backbone(config: Any) -> str | None:
    model = getattr(config, "model", None)
    if model is None:
        return None
    return model.backbone or PACKAGED_BACKBONE


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
    """Output schema only: no MLflow 3.17 input schema takes both a list of str and a frame with
    text + text_pair (see pipelines/pyfunc_model.py); the pyfunc checks its input itself."""
    outputs = Schema([
        ColSpec(DataType.string, "label"),
        ColSpec(DataType.long, "label_id"),
        ColSpec(Map(DataType.double), "probabilities"),
        ColSpec(DataType.long, "input_tokens"),
        ColSpec(DataType.long, "kept_tokens"),
        ColSpec(DataType.double, "flops_speedup"),
    ])
    return ModelSignature(inputs=None, outputs=outputs)


INPUT_EXAMPLE = pd.DataFrame({
    "text": ["a gripping, beautifully acted film", "the plot never comes together"],
})


def _check_model_dir(model_dir: str | Path) -> Path:
    from adapler.modeling import ADAPLER_WEIGHTS

    directory = Path(model_dir)
    if not (directory / "config.json").is_file() or not (directory / ADAPLER_WEIGHTS).is_file():
        raise RegistryError(f"{directory} is not an AdapLeR model directory (needs config.json and {ADAPLER_WEIGHTS})")
    pickles = sorted(p.name for p in directory.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise RegistryError(
            f"{directory} holds pickle-format files {pickles}; the registry takes safetensors only "
            "(save the model with AdapLeRForSequenceClassification.save_pretrained)"
        )
    return directory


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _version_tags(config: Any, metrics: Mapping[str, float]) -> dict[str, str]:
    tags = {"dataset": _dataset(config), "backbone": _backbone(config)}
    for key in ("dev_accuracy", "test_accuracy"):
        if key in metrics:
            tags[key] = str(float(metrics[key]))
    for key in ("flops_speedup", "test_flops_speedup", "dev_flops_speedup"):
        if key in metrics:
            tags["flops_speedup"] = str(float(metrics[key]))
            break
    return {k: v for k, v in tags.items() if v is not None}


def _description(tags: Mapping[str, str]) -> str:
    parts = []
    for key, label in (("dev_accuracy", "dev accuracy"), ("test_accuracy", "test accuracy")):
        if key in tags:
            parts.append(f"{label} {float(tags[key]):.4f}")
    if "flops_speedup" in tags:
        parts.append(f"FLOPs speedup {float(tags['flops_speedup']):.2f}x")
    head = f"AdapLeR ({tags.get('backbone', 'unknown backbone')}) on {tags.get('dataset', 'unknown data')}"
    return head + (": " + ", ".join(parts) if parts else "")


def register_model(
    model_dir: str | Path,
    config: Any,
    metrics: Mapping[str, float],
    registered_model: str = "",
    alias: str | None = "champion",
    parent_run_id: str | None = None,
) -> tuple[str, str]:
    """Log ``model_dir`` as a models-from-code pyfunc, register it, point ``alias`` at it (None:
    no alias is set or moved).

    The registration run holds the config (params, config.json), ``metrics`` and the model; it is
    nested under ``parent_run_id`` (or under the caller's active MLflow run, if any). The model
    version gets the tags dataset, backbone, dev_accuracy, test_accuracy, flops_speedup (those
    known) and a description. ``registered_model`` "" = :func:`registered_model_name`.
    Returns ``(name, version)``.
    """
    import adapler

    directory = _check_model_dir(model_dir)
    name = registered_model or registered_model_name(config)
    section = _mlflow_section(config)
    setup_mlflow(section)
    uri = tracking_uri(section)
    client = _client(uri)
    experiment_id = _run_experiment(client, section, uri, parent_run_id)
    tags = _version_tags(config, metrics)
    with mlflow.start_run(
        run_name=f"register-{name}", experiment_id=experiment_id, parent_run_id=parent_run_id,
        nested=mlflow.active_run() is not None, tags={"adapler.stage": "register"},
    ) as run:
        _log_params(client, run.info.run_id, flatten_config(config))
        mlflow.log_text(json.dumps(_config_dict(config), indent=2, default=str), "config.json")
        if metrics:
            mlflow.log_metrics({_metric_key(k): v for k, v in _finite(metrics).items()})
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
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=_description(tags))
    return name, version


def model_version(name: str, alias: str = "champion", uri: str | None = None):
    """The ModelVersion that ``name@alias`` points to; RegistryError for an unknown name or alias."""
    uri = _read_uri(uri)
    client = _client(uri)
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


def load_champion(name: str, alias: str = "champion", uri: str | None = None):
    """``mlflow.pyfunc.load_model("models:/<name>@<alias>")``, with a RegistryError for an unknown
    name or alias. ``uri``: the tracking URI (default: as set by setup_mlflow, else the default)."""
    uri = _read_uri(uri)
    version = model_version(name, alias, uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    return mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")


def download_model_dir(name: str, alias: str = "champion", dst_path: str | Path | None = None, uri: str | None = None) -> str:
    """Download ``name@alias`` and return the local path of its AdapLeR directory (config.json,
    safetensors, tokenizer), for ``Predictor.from_directory``.

    Read it, do not write into it: without ``dst_path``, MLflow returns a store on local disk
    in place (no copy), so the path may be the registry's own folder; elsewhere it downloads to a
    new temporary directory. ``dst_path``: download a private copy there instead."""
    import yaml

    uri = _read_uri(uri)
    version = model_version(name, alias, uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_tracking_uri(uri)
    if dst_path is not None:
        Path(dst_path).mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{version.version}", dst_path=None if dst_path is None else str(dst_path),
    ))
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    entry = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts", {}).get(MODEL_ARTIFACT)
    if not entry:
        raise RegistryError(f"{name}@{alias} (version {version.version}) has no {MODEL_ARTIFACT!r} artefact")
    directory = local / entry["path"]
    _check_model_dir(directory)
    return str(directory)
