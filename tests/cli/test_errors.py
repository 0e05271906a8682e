"""Every failure that is the user's to fix is one line, `adapler: error: ...`, exit 2, never a
trace: bad --model for every command that takes one, a malformed models:/ URI, `tune` with
no stage 1 to reuse (before Ray or MLflow start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapler_cli.errors import UserError, expected_errors, one_line
from adapler_cli.main import main

ERASER = str(Path(__file__).parents[1] / "fixtures" / "eraser")
DATA = ["--data", "rotten_tomatoes", "--set", "limit=8"]
# Each command that takes --model, with what it needs besides.
COMMANDS = {
    "predict": ["predict", "{how}", "A gripping film."],
    "evaluate": ["evaluate", "{how}", *DATA],
    "calibrate": ["calibrate", "{how}", *DATA, "--max-drop", "0.01"],
    "rationales": ["rationales", "{how}", "--data", ERASER],
    "serve": ["serve", "{how}", "--port", "1"],  # fails on the model before it binds or starts Ray
}


def assert_one_line_error(capsys, argv, message: str) -> None:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("adapler: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


def _argv(command: str, model: str) -> list[str]:
    argv = []
    for arg in COMMANDS[command]:
        argv += ["--model", model] if arg == "{how}" else [arg]
    return argv


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_missing_model_directory(command, tmp_path, capsys):
    assert_one_line_error(capsys, _argv(command, str(tmp_path / "nope")), "model directory not found")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_malformed_model_uri(command, capsys):
    assert_one_line_error(capsys, _argv(command, "models:/adapler-demo"), "is not models:/<name>@<alias>")


@pytest.mark.parametrize("command", ["predict", "evaluate", "calibrate", "rationales"])
def test_a_directory_that_is_not_a_model(command, tmp_path, capsys):
    (tmp_path / "model").mkdir()  # a run directory whose model/ is empty
    assert_one_line_error(capsys, _argv(command, str(tmp_path)), "is not an AdapLeR model directory")


def test_unknown_registered_model(mlflow_uri, capsys):
    argv = ["predict", "--model", "models:/adapler-nothing@champion", "--tracking-uri", mlflow_uri, "x"]
    assert_one_line_error(capsys, argv, "adapler-nothing")


def test_tune_without_stage1_fails_before_ray_and_mlflow(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = [
        "tune",
        "--config",
        "demo",
        "--set",
        f"output_dir={tmp_path / 'runs'}",
        "--set",
        f"ray.storage_path={tmp_path / 'ray'}",
    ]
    assert_one_line_error(capsys, argv, "no stage-1 results")
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "tune started Ray before finding no stage 1"
    assert not (tmp_path / "mlflow.db").exists(), "tune opened the MLflow store before finding no stage 1"
    assert not (tmp_path / "ray").exists()


def test_predict_file_not_found(tmp_path, capsys):
    argv = ["predict", "--model", str(tmp_path), "--file", str(tmp_path / "texts.txt")]
    assert_one_line_error(capsys, argv, "texts.txt")


def test_expected_errors_import_nothing_heavy_and_commands_never_import_main():
    code = (
        "import sys\n"
        "from adapler_cli.errors import expected_errors\n"
        "import adapler_cli.calibrate, adapler_cli.rationales, adapler_cli.report, adapler_cli.models\n"
        "import adapler_cli.serve\n"
        "classes = {c.__name__ for c in expected_errors()}\n"
        "assert {'UserError', 'ArtifactError', 'ConfigError', 'DataError'} <= classes, classes\n"
        "heavy = [m for m in ('mlflow', 'ray', 'adapler_pipelines.registry', 'adapler_cli.main') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_expected_errors_include_loaded_library_errors():
    from adapler.artifacts import ArtifactError
    from adapler.config import ConfigError

    classes = expected_errors()
    assert UserError in classes and ArtifactError in classes and ConfigError in classes
    assert ValueError not in classes and Exception not in classes  # a bug still shows its trace


def test_one_line():
    assert one_line(ValueError("first\n  second\n")) == "first second"
    assert one_line(UserError()) == "UserError"


def test_every_mapped_error_class_exists():
    """A renamed or moved class would silently fall out of the mapping: check the table."""
    import importlib

    from adapler_cli.errors import HEAVY, LIGHT

    for module_name, name in (*LIGHT, *HEAVY):
        cls = getattr(importlib.import_module(module_name), name, None)
        assert isinstance(cls, type) and issubclass(cls, Exception), f"{module_name}.{name}"
        assert cls in expected_errors(), f"{module_name}.{name}"


def test_a_run_directory_with_its_config_json_is_taken(tmp_path, tiny_model_factory, save_review_model, capsys):
    """runs/<name>/ holds the run's resolved config.json next to model/: --model takes it."""
    run_dir = tmp_path / "runs" / "demo"
    save_review_model(tiny_model_factory(num_labels=2), run_dir / "model")
    (run_dir / "config.json").write_text('{"name": "demo"}')
    assert main(["predict", "--model", str(run_dir), "--json", "Dull."]) == 0
    assert '"label"' in capsys.readouterr().out
