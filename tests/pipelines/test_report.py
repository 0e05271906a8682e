"""`adapler report` on a real SQLite MLflow store: a pipeline run logged with the pipeline's own
functions (stage-2 trial runs, the search's pareto artefacts, parent metrics and config.json, a
registered tiny model), then the pictures written and logged as artefacts of that run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from adapler.config import load_config, save_config
from adapler.inference import Predictor
from adapler.modeling import AdapLeRForSequenceClassification
from adapler_cli.main import main
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.report import highlight_examples

# (dev accuracy, dev FLOPs speedup) per epoch. Stage 1 scored 0.80, tolerance 0.01: t1 epoch 0 and
# t2 epoch 1 are the fastest points within tolerance, a tie the pipeline breaks by search order
# (t1, logged first); t2 epoch 0 is dominated by t1 epoch 1.
TRIALS = {"t1": [(0.80, 1.2), (0.78, 1.9)], "t2": [(0.70, 1.5), (0.80, 1.2)]}
REFERENCE = 0.80
FILES = ["highlight.html", "pareto.csv", "pareto.png", "retention.png"]

# Logs what pipelines/run.py logs, with the same functions, in a subprocess: MLflow's fluent
# API and the registration set process-wide tracking URIs that later tests must not inherit.
LOG_RUN = """
import json, sys
import mlflow
from adapler.config import config_from_dict
from adapler_pipelines.config import PipelineConfig
from adapler.config import apply_overrides
from pathlib import Path
from adapler.selection import Candidate, select
from adapler_pipelines.tune import searched_values, write_pareto
from adapler_pipelines.registry import register_model
from adapler_pipelines.tracking import log_stage_run, setup_mlflow

config_path, model_dir, trials, reference = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), float(sys.argv[4])
config = config_from_dict(json.load(open(config_path)), PipelineConfig)
setup_mlflow(config.mlflow)
with mlflow.start_run(run_name=config.name) as parent:
    run_id = parent.info.run_id
    mlflow.log_artifact(config_path, run_id=run_id)
    stage1 = log_stage_run(config, "stage1", [{"dev_accuracy": reference}], parent_run_id=run_id)
    candidates = []
    for index, (trial, epochs) in enumerate(trials.items()):
        history = [{"dev_accuracy": a, "dev_flops_speedup": s} for a, s in epochs]
        trial_config = apply_overrides(config, {"stage2.phi": 0.002 * (index + 1), "stage2.init": "finetuned"})
        log_stage_run(trial_config, f"stage2-{trial}", history, parent_run_id=run_id)
        params = searched_values(trial_config)
        candidates += [Candidate(trial, e, a, s, params) for e, (a, s) in enumerate(epochs)]
    report = Path(sys.argv[5])
    write_pareto(candidates, select(candidates, reference, 0.01), report, reference)
    mlflow.log_artifacts(str(report), artifact_path="report", run_id=run_id)
    metrics = {"stage1_dev_accuracy": reference, "dev_accuracy": 0.8, "dev_flops_speedup": 1.2, "test_accuracy": 0.7}
    mlflow.log_metrics(metrics, run_id=run_id)
    register_model(model_dir, config, metrics, config.mlflow.registered_model, parent_run_id=run_id)
print(json.dumps({"run_id": run_id, "stage1": stage1}))
"""


@pytest.fixture(scope="module")
def pipeline_run(tiny_backbone_dir, tiny_overrides, tmp_path_factory) -> dict:
    import torch

    tmp = tmp_path_factory.mktemp("report-run")
    config = load_config(None, tiny_overrides(tiny_backbone_dir, tmp, "report"), cls=PipelineConfig)
    save_config(config, tmp / "config.json")
    torch.manual_seed(0)
    # eta = 1: threshold 1/n, so the random CPs drop tokens at different layers
    model = AdapLeRForSequenceClassification.from_backbone(
        tiny_backbone_dir, num_labels=2, label_names=["rotten", "fresh"], eta_init=1.0
    )
    model.save_pretrained(tmp / "model")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            LOG_RUN,
            str(tmp / "config.json"),
            str(tmp / "model"),
            json.dumps(TRIALS),
            str(REFERENCE),
            str(tmp / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp,
        env={**os.environ, "MLFLOW_TRACKING_URI": config.mlflow.tracking_uri},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ids = json.loads(done.stdout.strip().splitlines()[-1])
    return {**ids, "uri": config.mlflow.tracking_uri}


@pytest.mark.slow
def test_report_writes_the_pictures_and_logs_them_to_the_run(pipeline_run, tmp_path):
    uri_before = mlflow.get_tracking_uri()
    out = tmp_path / "pictures"
    code = main(
        [
            "report",
            "--run",
            pipeline_run["run_id"],
            "--out",
            str(out),
            "--tracking-uri",
            pipeline_run["uri"],
            "--examples",
            "3",
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == FILES
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    for name in ("pareto.png", "retention.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name

    table = pd.read_csv(out / "pareto.csv")
    assert len(table) == 4
    chosen = table[table.chosen]
    assert (chosen.trial.tolist(), chosen.epoch.tolist()) == (["t1"], [0])
    assert table[~table.pareto][["trial", "epoch"]].values.tolist() == [["t2", 0]]
    assert table.groupby("trial")["stage2.phi"].first().to_dict() == {"t1": 0.002, "t2": 0.004}  # what each ran

    page = (out / "highlight.html").read_text()
    assert page.count('<div class="example">') == 3
    assert "gold " in page and "predicted " in page
    layers = {int(k) for k in re.findall(r'class="tok" data-layers="(\d+)"', page)}
    assert len(layers) > 1 and max(layers) == 2  # tokens dropped at different depths; [CLS] kept through both layers

    client = MlflowClient(tracking_uri=pipeline_run["uri"])
    logged = sorted(a.path for a in client.list_artifacts(pipeline_run["run_id"], "report"))
    assert logged == [f"report/{name}" for name in FILES]
    assert mlflow.get_tracking_uri() == uri_before  # the report left MLflow's process-wide URI alone


@pytest.mark.slow
def test_report_rejects_unknown_and_stage_runs_and_no_examples(pipeline_run, tmp_path, capsys):
    args = ["--out", str(tmp_path / "out"), "--tracking-uri", pipeline_run["uri"]]
    assert main(["report", "--run", "0123456789abcdef", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adapler: error: no MLflow run '0123456789abcdef'") and "\n" not in err

    assert main(["report", "--run", pipeline_run["stage1"], *args]) == 2
    err = capsys.readouterr().err.strip()
    assert f"it is a stage of run {pipeline_run['run_id']}" in err and "\n" not in err

    assert main(["report", "--run", pipeline_run["run_id"], "--examples", "0", *args]) == 2
    assert "at least one example" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_highlight_counts_match_the_predictor(tiny_model_factory, make_rows, sentences):
    """The per-token layer counts agree with Predictor: as many tokens enter layer l as
    kept_lengths[l] says, and the tokens entering the last layer are its kept_tokens[-1]."""
    model = tiny_model_factory(eta_init=1.0, num_labels=2)
    predictor = Predictor(model)
    rows = make_rows(sentences, labels=[0, 1, 0, 1, 0])
    examples = highlight_examples(predictor, rows, ["neg", "pos"])
    expected = predictor.predict(sentences, explain=True)
    assert len(examples) == len(sentences)
    assert any(0 < p.kept_lengths[-1] < p.input_tokens for p in expected)  # something was dropped
    for example, prediction in zip(examples, expected):
        assert len(example.tokens) == prediction.input_tokens
        assert [
            sum(k > layer for k in example.layers_entered) for layer in range(model.num_layers)
        ] == prediction.kept_lengths
        assert [
            t for t, k in zip(example.tokens, example.layers_entered) if k == model.num_layers
        ] == prediction.kept_tokens[-1]
        assert f"predicted {prediction.label}" in example.caption
