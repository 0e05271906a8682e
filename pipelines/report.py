"""The pictures of a pipeline run, written as files and logged as artefacts of the run.

- ``pareto.csv`` / ``pareto.png``: every (trial, epoch, eta factor) candidate of the stage-2
  search, the Pareto front and the chosen point, as the pipeline wrote them
  (:func:`adapler_pipelines.tune.write_pareto`): the run's own ``report/`` artefacts, copied, so
  the point marked chosen is the one the run chose and registered;
- ``retention.png``: the chosen model's mean fraction of tokens entering each layer, on the
  dev and test splits;
- ``highlight.html``: the first test examples, each token shaded by the layer at which the chosen
  model dropped it.

:func:`chosen_model_pictures` is what the pipeline calls at its end (it has the chosen model's
directory and the resolved config at hand). :func:`write_report` (``adapler report --run``)
writes all of them from MLflow alone, for the top-level run of ``adapler run`` / ``tune`` /
``demo``: its ``report/pareto.*`` and ``config.json`` artefacts and the model version registered
by its ``register`` run. Both log the pictures of the chosen model under the run's ``report/``
artefact folder, beside the pipeline's pareto files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from adapler.batching import encode, make_loader
from adapler.data import DatasetSplits, load_data
from adapler.evaluate import evaluate
from adapler.inference import Predictor
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.pictures import HighlightExample, highlight_html, retention_plot
from adapler.run_layout import REPORT_DIR
from adapler_pipelines.config import MlflowConfig, PipelineConfig
from adapler_pipelines.tracking import STAGE_TAG, TrackingError, client_for, read_run_config, tracking_uri
from adapler_pipelines.tune import TRIAL_PREFIX

RETENTION_PNG = "retention.png"
HIGHLIGHT_HTML = "highlight.html"
HIGHLIGHT_EXAMPLES = 5
PARETO_FILES = ("pareto.csv", "pareto.png")  # written by adapler_pipelines.tune.write_pareto
_MAX_CHILD_RUNS = 50_000  # MLflow's largest search page


class ReportError(ValueError):
    """A run that is not there, or lacks what the report needs: one line for the user."""


# --------------------------------------------------------------------------- the chosen model
@torch.no_grad()
def highlight_examples(predictor: Predictor, rows: pd.DataFrame, label_names: list[str]) -> list[HighlightExample]:
    """Each row's tokens and how many layers each entered (from the model's kept mask: the token
    strings of ``Predictor.predict(explain=True)`` lose their positions), captioned with the
    gold label and the prediction."""
    texts = rows["text"].tolist()
    pairs = rows["text_pair"].tolist()
    pairs = pairs if any(isinstance(p, str) for p in pairs) else None
    predictions = predictor.predict(texts, pairs)
    batch = encode(predictor.model.tokenizer, texts, pairs, predictor.max_length)
    batch = {k: v.to(predictor.device) for k, v in batch.items()}
    entered = predictor.model(**batch, removal=predictor.removal).kept_mask.sum(dim=1).cpu()  # (B, T)
    examples = []
    for row, (record, prediction) in enumerate(zip(rows.itertuples(), predictions)):
        present = batch["attention_mask"][row].bool().cpu()
        tokens = predictor.model.tokenizer.convert_ids_to_tokens(batch["input_ids"][row].cpu()[present].tolist())
        caption = (
            f"{record.id}: gold {label_names[record.label]}, predicted {prediction.label} "
            f"(p={prediction.probabilities[prediction.label]:.2f}), "
            f"{prediction.flops_speedup:.2f}x fewer FLOPs"
        )
        examples.append(HighlightExample(tokens, entered[row][present].tolist(), caption))
    return examples


def model_pictures(
    model: AdapLeRForSequenceClassification,
    data: DatasetSplits,
    run_name: str,
    directory: Path,
    examples: int = HIGHLIGHT_EXAMPLES,
) -> list[Path]:
    """retention.png (dev and test) and highlight.html (the first ``examples`` test rows) of
    ``model`` on ``data`` (the run ``run_name``'s), written to ``directory``; texts cut to the
    model's own input budget (``tokenizer.model_max_length``), as it runs in service."""
    curves = {}
    for split in ("dev", "test"):
        loader = make_loader(data.split(split), model.tokenizer, 32, model.tokenizer.model_max_length)
        curves[f"{data.name} {split}"] = evaluate(model, loader, removal="packed").retention
    retention = retention_plot(curves, directory / RETENTION_PNG, title=f"tokens kept per layer ({run_name})")
    predictor = Predictor(model)
    page = highlight_html(
        highlight_examples(predictor, data.test.head(examples), data.label_names),
        model.num_layers,
        title=f"Kept tokens: {run_name}, {data.name} test",
    )
    highlight = directory / HIGHLIGHT_HTML
    highlight.write_text(page, encoding="utf-8")
    return [retention, highlight]


def log_report(files: list[Path], run_id: str, uri: str) -> None:
    client = client_for(uri)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=REPORT_DIR)


def chosen_model_pictures(
    config: PipelineConfig, data: DatasetSplits, model_dir: str | Path, directory: Path, run_id: str
) -> list[Path]:
    """The pipeline's last step: the chosen model's pictures on the run's ``data``, written and
    logged to ``run_id``."""
    model = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    files = model_pictures(model, data, config.name, directory)
    log_report(files, run_id, tracking_uri(config.mlflow))
    return files


# --------------------------------------------------------------------------- a run, from MLflow
def _child_runs(client: MlflowClient, run) -> list:
    """Oldest first: the trials in the search's order, so that :func:`select` breaks ties between
    equal candidates as it did in the pipeline."""
    return client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        max_results=_MAX_CHILD_RUNS,
        order_by=["attributes.start_time ASC"],
    )


def _registered_model(client: MlflowClient, run_id: str, register_runs: list) -> AdapLeRForSequenceClassification:
    """The model version the run's ``register`` run created, loaded through its pyfunc."""
    versions = [v for r in register_runs for v in client.search_model_versions(f"run_id = '{r.info.run_id}'")]
    if not versions:
        raise ReportError(f"run {run_id} registered no model (did the pipeline finish?)")
    version = max(versions, key=lambda v: int(v.version))
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=client.get_model_version_download_uri(version.name, version.version),
            dst_path=tmp,
            tracking_uri=client.tracking_uri,
        )
        return mlflow.pyfunc.load_model(local).unwrap_python_model().predictor.model


def write_report(run_id: str, out: Path, uri: str = "", examples: int = HIGHLIGHT_EXAMPLES) -> list[Path]:
    """All the pictures of the pipeline run ``run_id`` (its top-level run), written to ``out`` and
    logged under the run's ``report/`` artefacts. ``uri`` "" = the project's default store."""
    if examples < 1:
        raise ReportError(f"the highlight needs at least one example, got {examples}")
    uri = tracking_uri(MlflowConfig(tracking_uri=uri))
    client = client_for(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ReportError(f"no MLflow run {run_id!r} in {uri}") from None
    children = _child_runs(client, run)
    stages = [(child.data.tags.get(STAGE_TAG, ""), child) for child in children]
    if not any(stage.startswith(TRIAL_PREFIX) for stage, _ in stages):
        parent = run.data.tags.get("mlflow.parentRunId")
        hint = f"it is a stage of run {parent}: give that one" if parent else "give the top-level run of `adapler run`"
        raise ReportError(f"run {run_id} has no stage-2 trial runs under it ({hint})")
    try:
        config = read_run_config(uri, run_id)
    except TrackingError as err:
        raise ReportError(str(err)) from None
    model = _registered_model(client, run_id, [child for stage, child in stages if stage == "register"])
    pareto = _pareto_files(client, run_id, out)  # the run's own, already under report/: not logged again
    pictures = model_pictures(model, load_data(config), config.name, out, examples)
    log_report(pictures, run_id, uri)
    return [*pareto, *pictures]


def _pareto_files(client: MlflowClient, run_id: str, out: Path) -> list[Path]:
    """The run's own pareto.csv and pareto.png (what the pipeline logged under ``report/``),
    copied into ``out``."""
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, REPORT_DIR)}
    missing = [name for name in PARETO_FILES if name not in logged]
    if missing:
        raise ReportError(f"run {run_id} logged no {REPORT_DIR}/{missing[0]} (did the pipeline reach stage 2's end?)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        return [
            Path(shutil.copy(client.download_artifacts(run_id, f"{REPORT_DIR}/{name}", tmp), out / name))
            for name in PARETO_FILES
        ]
