"""The pipeline for real on a tiny slice: local Ray (Train, Data, Tune), SQLite MLflow registry."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from chaos import HOOK
from chaos import marker as chaos_marker
from mlflow import MlflowClient

from adapler.artifacts import check_model_dir
from adapler.config import load_config
from adapler_pipelines.config import PipelineConfig
from adapler_pipelines.run import run_pipeline
from adapler_pipelines.train import fit_stage


@pytest.mark.slow
def test_pipeline_end_to_end_registers_a_champion(ray_local, tiny_backbone_dir, tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output_dir, as in the presets: trials run elsewhere
    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "e2e") + [
        "output_dir=runs",
        "mlflow.onnx_export=int8",
        "tune.max_lengths=[16, 32]",
        "tune.phi_min=0.5",
    ]
    config = load_config(None, overrides, cls=PipelineConfig)
    summary = run_pipeline(config)

    assert summary.registered_model == "adapler-tiny"
    assert summary.alias == "champion" and "no champion yet" in summary.promotion
    assert summary.flops_speedup > 0 and 0.0 <= summary.adapler_test_accuracy <= 1.0
    out = tmp_path / "runs" / "e2e"
    for name in (
        "config.json",
        "stage1.json",
        "summary.json",
        "report/pareto.csv",
        "report/pareto.png",
        "report/retention.png",
        "report/highlight.html",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert summary.model_dir == str(out / "model")
    check_model_dir(out / "model")  # the chosen model, where `adapler predict --model runs/<name>/model` looks
    saved = json.loads((out / "model" / "config.json").read_text())["adapler"]
    assert saved["eta_factor"] == pytest.approx(summary.chosen["factor"])  # calibration in the loop, recorded
    # the registered model's operating points, measured on dev, in its config.json and the summary
    assert set(saved["operating_points"]["named"]) == {"accurate", "balanced", "fast"}
    assert summary.operating_points == saved["operating_points"] and len(saved["operating_points"]["curve"]) >= 3
    assert (out / "report" / "operating_points" / "curve.png").is_file()
    assert "factor" in pd.read_csv(out / "report" / "pareto.csv").columns

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    client = MlflowClient(config.mlflow.tracking_uri, config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(config.mlflow.experiment)
    runs = client.search_runs([experiment.experiment_id])
    names = {run.info.run_name for run in runs}
    assert {"e2e", "e2e-stage1", "register-adapler-tiny"} <= names
    trials = [run for run in runs if run.info.run_name.startswith("e2e-stage2-")]
    assert len(trials) == 2  # one run per Tune trial, logged by the trial itself
    assert all(trial.info.status in ("FINISHED", "KILLED") for trial in trials)
    pareto = pd.read_csv(out / "report" / "pareto.csv", dtype={"trial": str})
    for trial in trials:  # params are what the trial ran (its sampled keys), not the preset's defaults
        sampled = pareto[pareto.trial == trial.data.tags["adapler.stage"].removeprefix("stage2-")].iloc[0]
        for key in ("stage2.gamma", "stage2.phi"):
            assert float(trial.data.params[key]) == pytest.approx(float(sampled[key])), key
    # the first trials take each input budget in turn at the config's values, phi clamped into its range
    assert all(float(trial.data.params["stage2.phi"]) == pytest.approx(0.5) for trial in trials)
    # the input budget is searched: a trial at 16 tokens reports its speedup against the 32-token backbone
    budgets = {trial.data.params["data.max_length"] for trial in trials}
    assert budgets == {"16", "32"}
    for trial in trials:
        at_budget, full = (trial.data.metrics[k] for k in ("dev_flops_speedup_at_budget", "dev_flops_speedup"))
        assert full > at_budget if trial.data.params["data.max_length"] == "16" else full == at_budget
    assert len(list((out / "saliency").glob("saliency-*"))) == 2  # labels for each budget
    tokenizer_config = json.loads((out / "model" / "tokenizer_config.json").read_text())
    assert summary.input_budget == tokenizer_config["model_max_length"] == summary.chosen["params"]["data.max_length"]
    assert saved["reference_max_length"] == (
        32 if summary.input_budget == 16 else None
    )  # what its speedups are against
    parent = next(run for run in runs if run.info.run_name == "e2e")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/retention.png", "report/highlight.html", "report/pareto.png"} <= logged, logged
    version = client.get_model_version_by_alias("adapler-tiny", "champion")
    assert str(version.version) == summary.version
    assert version.tags["operating_points"].startswith("accurate (factor ")  # and the version's run has the curve
    assert {a.path for a in client.list_artifacts(version.run_id, "operating_points")} == {
        "operating_points/curve.csv",
        "operating_points/curve.png",
    }

    model = mlflow.pyfunc.load_model("models:/adapler-tiny@champion")
    predictions = model.predict(["a gripping, beautifully made film", "dull and far too long"])
    assert len(predictions) == 2
    # the version carries its ONNX graphs (mlflow.onnx_export): runtime onnx loads them, no export
    from adapler.onnx_export import ensure_export
    from adapler_pipelines.model_source import resolve_model

    registered_dir = resolve_model("models:/adapler-tiny@champion", config.mlflow.tracking_uri)
    assert ensure_export(registered_dir, "int8").directory == registered_dir / "onnx"


@pytest.mark.slow
def test_worker_failure_resumes_from_the_last_checkpoint(ray_local, tiny_backbone_dir, tiny_overrides, tmp_path):
    # 48 rows / batch 16 = 3 steps per epoch: step 4 is the middle of epoch 1, after epoch 0's checkpoint.
    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "chaos") + ["stage1.epochs=2", f"ray.loader_hook={HOOK}"]
    config = load_config(None, overrides, cls=PipelineConfig)
    marker = chaos_marker(config.name)
    marker.unlink(missing_ok=True)
    epochs = fit_stage(config, "stage1", "chaos-stage1")

    assert marker.exists(), "the injected failure never fired"
    # Resumed from epoch 0's checkpoint: epoch 0 was not trained (and reported) a second time.
    assert [c.epoch for c in epochs] == [0, 1]
    marker.unlink()


@pytest.mark.slow
def test_a_rerun_with_another_config_does_not_resume_the_first_runs_checkpoints(
    ray_local, tiny_backbone_dir, tiny_overrides, tmp_path
):
    # Ray Train resumes from a snapshot under storage_path/<name>: a second `adapler run` of the same
    # name with other data once got the first run's stage-1 weights back, untrained on its data.
    first = fit_stage(
        load_config(None, tiny_overrides(tiny_backbone_dir, tmp_path, "rerun"), cls=PipelineConfig),
        "stage1",
        "rerun-stage1",
    )
    other = load_config(
        None, tiny_overrides(tiny_backbone_dir, tmp_path, "rerun") + ["stage1.lr=3e-4"], cls=PipelineConfig
    )
    second = fit_stage(other, "stage1", "rerun-stage1")
    assert {c.path for c in first}.isdisjoint(c.path for c in second)
    assert second[0].metrics["train_loss"] != first[0].metrics["train_loss"]  # trained again, at its own rate


# Etas pinned at 1e-4: a token leaves only if its score is under 1e-4 of the uniform 1/n, which
# near-uniform fresh CPs never give, so no token is removed.
NOTHING_REMOVED = [
    "model.adapler.eta_init=1e-4",
    "model.adapler.eta_min=1e-4",
    "model.adapler.eta_max=1e-4",
    "stage2.eta_lr=0",
    "stage2.phi=0",
]


@pytest.mark.slow
def test_a_run_that_removes_nothing_says_so(ray_local, tiny_backbone_dir, tiny_overrides, tmp_path, capsys):
    # no calibration in the loop: on a model at chance level it would scale the etas until only [CLS] is left
    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "noop") + [
        "tune.num_samples=0",
        "tune.calibrate=false",
        *NOTHING_REMOVED,
    ]
    config = load_config(None, overrides, cls=PipelineConfig)
    summary = run_pipeline(config)

    assert summary.no_pruning and summary.flops_speedup < 1.0  # the CPs cost a little, nothing is saved
    assert "removes almost no tokens" in summary.warning and "adapler tune --config" in summary.warning
    assert f"warning: {summary.warning}" in capsys.readouterr().out
    saved = json.loads((Path(summary.run_dir) / "summary.json").read_text())
    assert saved["no_pruning"] is True and saved["warning"] == summary.warning
    assert saved["within_tolerance"] is summary.within_tolerance
    client = MlflowClient(config.mlflow.tracking_uri)
    parent = client.search_runs(
        [client.get_experiment_by_name(config.mlflow.experiment).experiment_id],
        filter_string="attributes.run_name = 'noop'",
    )[0]
    assert parent.data.tags["adapler.no_pruning"] == "true"
    trial = client.search_runs([parent.info.experiment_id], filter_string="tags.`adapler.stage` = 'stage2-stage2'")
    assert len(trial) == 1  # the no-search stage-2 run, logged like a trial


def test_retrained_stage1_forgets_an_earlier_runs_epochs(tiny_backbone_dir, tiny_overrides, tmp_path):
    """A rerun with fewer stage-1 epochs must not average saliency over stale checkpoints."""
    from adapler.recipe import run_recipe, top_checkpoints

    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "stale") + ["stage1.epochs=1", "saliency_checkpoints=3"]
    checkpoints = tmp_path / "runs" / "stale" / "checkpoints"
    stale = checkpoints / "stage1-epoch4"  # from an earlier, longer run, better on dev than anything new
    stale.mkdir(parents=True)
    (stale / "metrics.json").write_text(json.dumps({"dev_accuracy": 1.0}))
    run_recipe(load_config(None, overrides, cls=PipelineConfig), progress=False)
    assert not stale.exists()
    assert [Path(p).name for p in top_checkpoints(checkpoints, "stage1", 3)] == ["stage1-epoch0"]


def test_train_writes_its_result_and_a_rerun_reuses_stage_1(tiny_backbone_dir, tiny_overrides, tmp_path, capsys):
    """`adapler train`: the result in summary.json (the record `adapler run` writes too); a rerun
    with the same model, data and stage-1 config reuses the stage-1 record instead of training."""
    from adapler.recipe import run_recipe
    from adapler.run_layout import RunLayout

    unlabeled = tmp_path / "unlabeled.csv"
    unlabeled.write_text("text\n" + "".join(f"an unlabelled review number {i} good or bad\n" for i in range(30)))
    overrides = tiny_overrides(tiny_backbone_dir, tmp_path, "again") + [f"data.unlabeled_file={unlabeled}"]
    config = load_config(None, overrides, cls=PipelineConfig)
    layout = RunLayout.of(config)
    result = run_recipe(config, progress=False)
    saved = json.loads(layout.summary.read_text())
    assert saved == json.loads(json.dumps(result.to_dict()))
    assert saved["model_dir"] == str(layout.model) and saved["registered_model"] == ""
    assert saved["no_pruning"] is (saved["dev_flops_speedup"] < 1.1) and saved["within_tolerance"] in (True, False)
    # the epoch was chosen by the paired rule, and the certificate counts the unlabelled texts too
    dev = saved["chosen"]["paired"]["examples"]
    assert dev > 0 and saved["chosen"]["label_free"]["texts"] == 30
    certificate = saved["certificate"]
    assert certificate["dev_examples"] == dev and certificate["disagreement_texts"] == dev + 30
    assert certificate["drop_bound"] >= certificate["dev_drop"] and certificate["confidence"] == 0.9  # one epoch
    check_model_dir(layout.model)
    record = layout.stage1.read_text()
    assert "training stage 1" in capsys.readouterr().out

    run_recipe(config, progress=False)
    assert "reusing the stage-1 checkpoints" in capsys.readouterr().out
    assert layout.stage1.read_text() == record


def test_the_parent_run_tags_say_how_the_run_ended(mlflow_uri):
    """The warnings reach the parent run's adapler.* tags (the sentences: tests/test_selection.py)."""
    from adapler.selection import RunWarnings
    from adapler_pipelines.registry import Promotion
    from adapler_pipelines.run import tag_parent_run

    config = load_config(None, [f"mlflow.tracking_uri={mlflow_uri}"], cls=PipelineConfig)
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("tags")).info.run_id
    warnings = RunWarnings("", "no model stage 2 trained stayed within 1 point(s) ...")
    tag_parent_run(config, run_id, "adapler-x", "2", Promotion("challenger", "version 2 is @challenger"), warnings)
    tags = client.get_run(run_id).data.tags
    assert tags["adapler.within_tolerance"] == "false" and tags["adapler.no_pruning"] == "false"
    assert tags["adapler.warning"] == warnings.text and tags["adapler.alias"] == "challenger"
    assert tags["adapler.registered_model"] == "adapler-x" and tags["adapler.version"] == "2"


def test_earlier_stage1_is_the_run_dir_only_where_a_matching_stage1_record_is(tmp_path, capsys):
    from adapler.run_layout import RunLayout
    from adapler.stage1_record import Stage1Record, trained_with
    from adapler_pipelines.run import absolute_paths, earlier_stage1

    config = load_config(None, [f"output_dir={tmp_path}", "name=again"], cls=PipelineConfig)
    layout = RunLayout.of(config)
    assert earlier_stage1(config) is None
    assert f"no {layout.stage1} to reuse yet: training stage 1" in capsys.readouterr().out
    layout.root.mkdir(parents=True)
    checkpoints = [{"path": "ckpt", "epoch": 0, "dev_accuracy": 0.5}]
    record = Stage1Record(checkpoints, "sal", trained_with(absolute_paths(config)))
    record.write(layout)
    assert earlier_stage1(config) == config.run_dir
    assert f"reusing the stage-1 checkpoints and saliency labels of {config.run_dir}" in capsys.readouterr().out
    other = load_config(None, [f"output_dir={tmp_path}", "name=again", "stage1.lr=1e-3"], cls=PipelineConfig)
    assert earlier_stage1(other) is None  # trained with another stage-1 config: trained again
    assert "training stage 1 again" in capsys.readouterr().out
