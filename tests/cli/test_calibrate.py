"""`adapler calibrate` on a saved tiny model and 20 packaged Rotten Tomatoes reviews per split."""

from __future__ import annotations

import pytest
import torch

from adapler.batching import make_loader
from adapler.data import load_splits
from adapler.evaluate import evaluate
from adapler.modeling import AdapLeRForSequenceClassification
from adapler_cli.main import main

DATA = ["--data", "rotten_tomatoes", "--set", "limit=20"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_factory, save_review_model):
    model = tiny_model_factory(num_labels=2)
    with torch.no_grad():  # uneven CP scores: the speedup grows gradually with the factor
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(6.0)
    return save_review_model(model, tmp_path_factory.mktemp("calibrate-model"))


def curve_rows(out: str) -> list[str]:
    """The table rows of the printed curve: lines that start with a factor."""
    rows = []
    for line in out.splitlines():
        try:
            float(line.split()[0])
        except (IndexError, ValueError):
            continue
        rows.append(line)
    return rows


def dev_speedup(directory: str) -> float:
    model = AdapLeRForSequenceClassification.from_pretrained(directory)
    loader = make_loader(load_splits("rotten_tomatoes", limit=20).dev, model.tokenizer, 32, 64)
    return evaluate(model, loader).flops_speedup


def test_target_speedup_saves_a_calibrated_model(model_dir, tmp_path, capsys):
    output = tmp_path / "calibrated"
    assert main(["calibrate", "--model", model_dir, *DATA, "--target-speedup", "3", "--output", str(output)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["factor", "dev", "accuracy", "FLOPs", "speedup", "examples/s"]
    curve = curve_rows(out)
    assert len(curve) >= 4 and sum("<- chosen" in line for line in curve) == 1
    assert any("(as trained)" in line and line.split()[0] == "1" for line in curve)
    assert f"saved: {output}" in out

    source = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    calibrated = AdapLeRForSequenceClassification.from_pretrained(output)
    ratio = calibrated.etas.detach() / source.etas.detach()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio)) and ratio[0] > 1  # one global factor, up
    chosen = next(line for line in curve if "<- chosen" in line)
    assert float(chosen.split()[0]) == pytest.approx(float(ratio[0]), rel=1e-3)
    assert dev_speedup(str(output)) >= 3.0  # measured again, from the saved model
    assert dev_speedup(model_dir) < 3.0  # and the source directory is left as trained


def test_max_drop_without_output_only_prints(model_dir, capsys):
    assert main(["calibrate", "--model", model_dir, *DATA, "--max-drop", "0.05"]) == 0
    captured = capsys.readouterr()
    assert "<- chosen" in captured.out and "not saved: give --output DIR" in captured.out
    assert "factor 1: dev accuracy" in captured.err  # progress, one line per factor


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/nonexistent", *DATA, "--max-drop", "0.01"], "model directory not found"),
        (["--model", "{model}", "--data", "bbc_news", "--set", "limit=5", "--max-drop", "0.01"], "labels"),
        (["--model", "{model}", *DATA, "--target-speedup", "1000"],
         "unreachable by scaling the thresholds: the best reached is"),
        (["--model", "{model}", *DATA, "--max-drop", "0.01", "--set-alias", "champion"],
         "--set-alias needs a registered model"),
        (["--model", "{model}", *DATA, "--max-drop", "0.01", "--output", "{model}"], "--output must differ"),
        (["--model", "{model}", *DATA, "--max-drop", "2"], "--max-drop must be in [0, 1]"),
        (["--model", "models:/no-alias", *DATA, "--max-drop", "0.01"], "is not models:/<name>@<alias>"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(model_dir, capsys, argv, message):
    argv = ["calibrate", *(a.replace("{model}", model_dir) for a in argv)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("adapler: error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert "Traceback" not in err


def test_exactly_one_goal(model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["calibrate", "--model", model_dir, "--target-speedup", "2", "--max-drop", "0.01"])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
