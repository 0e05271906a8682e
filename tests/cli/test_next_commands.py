"""What `adapler run` / `demo` / `tune` print at the end: commands that work on what the run made."""

from __future__ import annotations

import shlex
from types import SimpleNamespace

from adapler.config import load_config, resolve_preset
from adapler_cli.main import build_parser, next_commands
from adapler_pipelines.config import PipelineConfig


def summary(tmp_path, name="adapler-demo", alias="champion"):
    run_dir = tmp_path / "runs" / "demo"
    return SimpleNamespace(
        registered_model=name,
        version="3",
        alias=alias,
        run_dir=str(run_dir),
        model_dir=str(run_dir / "model"),
        promotion="version 3 became champion: ...",
    )


def parsed(commands):
    """Each command as the CLI's parser reads it (so every option printed exists)."""
    parser = build_parser()
    out = {}
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "adapler"
        out[argv[1]] = (argv, parser.parse_args(argv[1:]))
    return out


def test_demo_commands_use_the_registered_alias_the_model_dir_and_the_run_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(resolve_preset("demo"), [], cls=PipelineConfig)
    commands = parsed(next_commands(summary(tmp_path), config))

    assert set(commands) == {"predict", "evaluate", "calibrate", "serve"}
    assert commands["predict"][1].model == "models:/adapler-demo@champion"
    assert commands["predict"][1].texts
    evaluate = commands["evaluate"][1]
    assert evaluate.model == "models:/adapler-demo@champion"
    assert evaluate.data == "bbc_news" and evaluate.set == [f"limit={config.data.limit}"]
    calibrate = commands["calibrate"][1]
    assert calibrate.model == "runs/demo/model"  # relative to where the user is
    assert calibrate.data == "bbc_news" and calibrate.set == [f"limit={config.data.limit}"]
    assert calibrate.output == "runs/demo/model-calibrated" and calibrate.max_drop == 0.01
    assert commands["serve"][1].model == "models:/adapler-demo@champion"
    assert all(args.tracking_uri == "" for _, args in commands.values() if hasattr(args, "tracking_uri"))


def test_a_challenger_files_data_and_an_explicit_tracking_uri(tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    overrides = [
        "name=mine",
        "data.train_file=data/train.csv",
        "data.test_file=data/test.csv",
        "data.text_column=review",
        "data.text_pair_column=title",
        "mlflow.tracking_uri=sqlite:///store/mlflow.db",
    ]
    config = load_config(resolve_preset("files"), overrides, cls=PipelineConfig)
    commands = parsed(next_commands(summary(tmp_path / "elsewhere", "adapler-mine", "challenger"), config))

    predict = commands["predict"][1]
    assert predict.model == "models:/adapler-mine@challenger" and predict.pair
    assert predict.tracking_uri == "sqlite:///store/mlflow.db"
    evaluate = commands["evaluate"][1]
    assert evaluate.model == "models:/adapler-mine@challenger" and evaluate.data == "files"
    assert set(evaluate.set) == {
        "train_file=data/train.csv",
        "test_file=data/test.csv",
        "text_column=review",
        "text_pair_column=title",
    }
    assert commands["calibrate"][1].set == evaluate.set
    assert commands["serve"][1].tracking_uri == "sqlite:///store/mlflow.db"
    # a run directory outside the working directory is shown as it is
    assert commands["calibrate"][1].model == str(tmp_path / "elsewhere" / "runs" / "demo" / "model")


def test_hub_data_keeps_its_config(tmp_path):
    config = load_config(resolve_preset("sst2"), [], cls=PipelineConfig)
    evaluate = parsed(next_commands(summary(tmp_path, "adapler-sst2"), config))["evaluate"][1]
    assert evaluate.data == "nyu-mll/glue" and set(evaluate.set) == {"hub_config=sst2", "text_column=sentence"}


def test_commands_call_adapler_the_way_it_was_started(tmp_path):
    config = load_config(resolve_preset("demo"), [], cls=PipelineConfig)
    commands = next_commands(summary(tmp_path), config, program=".venv/bin/adapler")
    assert commands and all(c.startswith(".venv/bin/adapler ") for c in commands)
