"""The run directory: its layout, the stage-1 record a rerun reuses, the result record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapler.config import ExperimentConfig, load_config
from adapler.run_layout import RunLayout, checkpoint_model_dir
from adapler.run_result import RunResult
from adapler.stage1_record import Stage1Missing, Stage1Record, read_stage1, reusable_stage1, trained_with


def test_the_layout_of_a_config_is_its_run_dir(tmp_path):
    config = load_config(None, [f"output_dir={tmp_path}", "name=x"])
    layout = RunLayout.of(config)
    assert layout.root == tmp_path / "x" == config.run_dir
    assert layout.config == tmp_path / "x" / "config.json"
    assert layout.model == tmp_path / "x" / "model" and layout.summary == tmp_path / "x" / "summary.json"
    assert layout.operating_points == tmp_path / "x" / "report" / "operating_points"
    assert layout.stage1.name == "stage1.json" and layout.calibrated_model.name == "model-calibrated"


def test_checkpoint_model_dir_keeps_uris_whole():
    assert checkpoint_model_dir("s3://bucket/run/checkpoint_000/") == "s3://bucket/run/checkpoint_000/model"
    assert checkpoint_model_dir(Path("/tmp/c")) == "/tmp/c/model"


def test_stage1_record_round_trip_and_reuse_rule(tmp_path, capsys):
    config = load_config(None, [f"output_dir={tmp_path}", "name=x"])
    layout = RunLayout.of(config)
    with pytest.raises(Stage1Missing, match="run `adapler run` first"):
        read_stage1(layout)
    layout.root.mkdir(parents=True)
    record = Stage1Record(
        [
            {"path": "s3://b/c1", "epoch": 1, "dev_accuracy": 0.8},
            {"path": "s3://b/c0", "epoch": 0, "dev_accuracy": 0.7},
        ],
        "s3://b/sal",
        trained_with(config),
    )
    record.write(layout)
    again = read_stage1(layout)
    assert again == record and again.reference == 0.8 and again.best_model_dir == "s3://b/c1/model"
    assert again.model_dirs == ["s3://b/c1/model", "s3://b/c0/model"]
    assert reusable_stage1(layout, config) == record
    changed = load_config(None, [f"output_dir={tmp_path}", "name=x", "saliency_checkpoints=1"])
    assert reusable_stage1(layout, changed) is None
    assert "training stage 1 again" in capsys.readouterr().out
    assert trained_with(ExperimentConfig()).keys() == {"model", "data", "stage1", "saliency_checkpoints"}


def test_run_result_writes_summary_json_and_a_table(tmp_path):
    result = RunResult(
        dataset="d",
        backbone="b",
        run_dir=str(tmp_path),
        model_dir=str(tmp_path / "model"),
        stage1_dev_accuracy=0.8,
        backbone_test_accuracy=0.81,
        adapler_test_accuracy=0.8,
        flops_speedup=2.5,
        dev_flops_speedup=2.4,
        input_budget=64,
        backbone_input_budget=64,
        retention=[1.0, 0.5],
        no_pruning=False,
        within_tolerance=True,
        warning="",
        chosen={"factor": 1.5},
        wall_seconds=3.0,
    )
    result.write(RunLayout(tmp_path))
    assert json.loads((tmp_path / "summary.json").read_text()) == result.to_dict()
    assert "examples/s" not in result.table() and "2.50x" in result.table() and "1.5" in result.table()
    result.backbone_examples_per_s, result.adapler_examples_per_s = 10.0, 25.0
    assert "examples/s (sorted batches)" in result.table() and "25.0" in result.table()
