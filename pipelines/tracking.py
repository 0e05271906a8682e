"""MLflow tracking: the store, the experiment, and one run per stage or trial (no Ray needed).

- :func:`tracking_uri` says which store a config means (``mlflow.tracking_uri``, else
  ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs ./mlflow.db>``); for a SQLite store the
  artefacts go to ``mlartifacts/`` next to the database file, never into the working directory.
  Processes that do not share the driver's working directory (Ray Tune trials change theirs)
  get the absolute URI through the config: :func:`setup_mlflow` returns it.
- :class:`StageRun` records a stage (stage 1, a stage-2 trial, a calibration) as it goes: the
  resolved config as params and as ``config.json``, one step per epoch, files, its status. A
  trial opens its own from inside the trial, where its real config is. It uses the client API
  only (no fluent "active run"), so Ray workers and threads can log side by side;
  ``parent_run_id`` nests the run under the driver's run. :func:`log_stage_run` is a finished
  one in one call.
- :func:`read_run_config` reads a run's ``config.json`` back as a typed config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adapler.config import ConfigError, config_from_dict, config_to_dict
from adapler_pipelines.config import MlflowConfig, PipelineConfig

STAGE_TAG = "adapler.stage"  # "stage1", "stage2-<trial>", "register", "calibrate", ...
CONFIG_ARTIFACT = "config.json"

_MAX_PARAM_VALUE = 6000  # MLflow's limit on a param value
_MAX_KEY = 250  # ... and on a param / metric key
_BATCH = 100  # params per log_batch call
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- ]")  # MLflow keys: alphanumerics, _ - . / space (and : off Windows)


class TrackingError(ValueError):
    """A run that is not there, or lacks what is asked of it (one line for the user)."""


# --------------------------------------------------------------------------- store and experiment
def tracking_uri(section: MlflowConfig | None = None) -> str:
    """The config's URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<abs path of ./mlflow.db>``.

    A relative SQLite path is made absolute here, so the URI means the same store in processes
    with another working directory (Ray Tune trials run in their trial folder).
    """
    value = (section.tracking_uri if section is not None else "") or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not value:
        return f"sqlite:///{Path('mlflow.db').resolve()}"
    db = _sqlite_path(value)
    if db is not None and not value[len("sqlite:///") :].startswith("/"):
        query = value.split("?", 1)[1] if "?" in value else ""
        return f"sqlite:///{db}" + (f"?{query}" if query else "")
    return value


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path).resolve() if path and path != ":memory:" else None


def _artifact_location(uri: str) -> str | None:
    """Artefacts of a SQLite store live next to the database (``mlartifacts/``); a server decides
    for itself (None). MLflow's own default would be a folder in the current working directory."""
    db = _sqlite_path(uri)
    return str(db.parent / "mlartifacts") if db is not None else None


def client_for(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(client: MlflowClient, name: str, uri: str, artifact_location: str = "") -> str:
    """The experiment ``name`` (restored if deleted; created if missing, with its artefacts at
    ``artifact_location`` (mlflow.artifact_location), else next to a SQLite database). An
    existing experiment keeps the artefact location it was created with."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location or _artifact_location(uri))
    except MlflowException:  # created by another process in between
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def run_experiment(client: MlflowClient, section: MlflowConfig, uri: str, parent_run_id: str | None) -> str:
    """The experiment of a new run: its parent's, else the configured one (created if missing)."""
    if not parent_run_id:
        return experiment_id(client, section.experiment, uri, section.artifact_location)
    try:
        return client.get_run(parent_run_id).info.experiment_id
    except MlflowException as err:
        raise TrackingError(f"parent run {parent_run_id!r} not found in {uri}: {err.message}") from None


def setup_mlflow(section: MlflowConfig) -> str:
    """Point MLflow's fluent API (tracking and registry) at the configured store and experiment;
    returns the absolute URI, for the config that other processes read."""
    uri = tracking_uri(section)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment_id(client_for(uri), section.experiment, uri, section.artifact_location)
    mlflow.set_experiment(section.experiment)
    return uri


# --------------------------------------------------------------------------- params and metrics
def _key(key: str) -> str:
    return _INVALID_KEY_CHARS.sub("_", str(key))[:_MAX_KEY]


def _param_value(value: Any) -> str:
    if value is None or isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    if len(text) > _MAX_PARAM_VALUE:
        text = text[: _MAX_PARAM_VALUE - 3] + "..."
    return text


def _config_dict(config: Any) -> dict[str, Any]:
    return dict(config) if isinstance(config, Mapping) else config_to_dict(config)


def flatten_config(config: Any) -> dict[str, str]:
    """Dotted keys (``stage2.phi``) -> str values (lists and None as JSON), ready for log_params.

    Takes a config dataclass (or its dict). Keys are cut to MLflow's charset and 250 characters,
    values to its 6000-character limit.
    """
    flat: dict[str, str] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, f"{dotted}.")
            else:
                flat[_key(dotted)] = _param_value(value)

    walk(_config_dict(config), "")
    return flat


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    items = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(items), _BATCH):
        client.log_batch(run_id, params=items[start : start + _BATCH])


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite entries under MLflow-safe keys; TypeError naming a non-number."""
    out = {}
    for key, value in metrics.items():
        if value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"metric {key!r} = {value!r} is not a number") from None
        if number == number and abs(number) != float("inf"):
            out[_key(key)] = number
    return out


def log_config(client: MlflowClient, run_id: str, config: Any) -> None:
    """The config as params (dotted keys) and as the ``config.json`` artefact."""
    log_params(client, run_id, flatten_config(config))
    client.log_text(run_id, json.dumps(_config_dict(config), indent=2, default=str), CONFIG_ARTIFACT)


def log_files(client: MlflowClient, run_id: str, artifacts: Mapping[str, str | Path]) -> None:
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


# --------------------------------------------------------------------------- runs
class StageRun:
    """One MLflow run for a stage or a trial, logged as it goes.

    ``with StageRun(config, "stage2-abc", parent_run_id=...) as run: run.log_epoch(metrics, epoch)``
    ends FINISHED, or FAILED on an exception (KILLED on KeyboardInterrupt / SystemExit).
    """

    def __init__(
        self,
        config: PipelineConfig,
        stage: str,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ):
        self.uri = tracking_uri(config.mlflow)
        self.client = client_for(self.uri)
        experiment = run_experiment(self.client, config.mlflow, self.uri, parent_run_id)
        run_tags = {STAGE_TAG: stage, **{str(k): str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment, run_name=f"{config.name}-{stage}", tags=run_tags)
        self.run_id = run.info.run_id
        try:
            log_config(self.client, self.run_id, config)
        except BaseException:
            self.end("FAILED")
            raise

    def log_epoch(self, metrics: Mapping[str, Any], step: int) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, step) for k, v in finite_metrics(metrics).items()]
        for start in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[start : start + 1000])

    def log_files(self, artifacts: Mapping[str, str | Path]) -> None:
        log_files(self.client, self.run_id, artifacts)

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)

    def __enter__(self) -> StageRun:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.end("FINISHED")
        else:
            self.end("KILLED" if issubclass(kind, (KeyboardInterrupt, SystemExit)) else "FAILED")


def log_stage_run(
    config: PipelineConfig,
    stage: str,
    history: list[Mapping[str, float]],
    artifacts: Mapping[str, str | Path] | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> str:
    """One finished MLflow run for a stage; returns its run id.

    params = the resolved config (dotted keys), metrics = ``history`` (one dict per epoch, step =
    its ``epoch`` entry if it has one, else its index), artefacts = ``config.json`` plus
    ``artifacts`` (``{artefact path: local path}``).
    """
    for name, local in (artifacts or {}).items():
        if not Path(local).exists():
            raise FileNotFoundError(f"artefact {name!r}: {local} does not exist")
    with StageRun(config, stage, parent_run_id, tags) as run:
        for index, entry in enumerate(history):
            run.log_epoch({k: v for k, v in entry.items() if k != "epoch"}, int(entry.get("epoch", index)))
        run.log_files(artifacts or {})
    return run.run_id


def end_open_runs(uri: str, parent_run_id: str, status: str = "KILLED") -> list[str]:
    """Mark the children of ``parent_run_id`` still RUNNING (a trial the scheduler stopped, or
    whose process died) with ``status``; returns their run ids."""
    client = client_for(uri)
    parent = client.get_run(parent_run_id)
    open_runs = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'",
    )
    for run in open_runs:
        client.set_terminated(run.info.run_id, status)
    return [run.info.run_id for run in open_runs]


def read_run_config(uri: str, run_id: str) -> PipelineConfig:
    """The PipelineConfig a run logged as its ``config.json``; TrackingError if it has none."""
    client = client_for(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        except (MlflowException, OSError, TypeError):  # no run (TypeError: run_id None), no file
            raise TrackingError(f"run {run_id} has no {CONFIG_ARTIFACT} artefact in {uri}") from None
        try:
            raw = json.loads(Path(local).read_text())
            if isinstance(raw, dict) and isinstance(raw.get("mlflow"), dict):
                raw["mlflow"].pop("alias", None)  # runs logged before champion/challenger (now mlflow.promote)
            return config_from_dict(raw, PipelineConfig)
        except (ConfigError, json.JSONDecodeError) as err:
            raise TrackingError(f"run {run_id}: its {CONFIG_ARTIFACT} is not a pipeline config ({err})") from None
