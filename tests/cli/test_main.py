"""The `adapler` command line: predict and evaluate on a saved tiny model, and clear errors."""

from __future__ import annotations

import json

import pytest

from adapler.inference import Predictor
from adapler_cli.main import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_factory, save_review_model):
    return save_review_model(tiny_model_factory(num_labels=2), tmp_path_factory.mktemp("cli-model"))


def test_predict_json_matches_the_library(model_dir, capsys):
    texts = ["A gripping, beautifully acted film.", "Dull."]
    assert main(["predict", "--model", model_dir, "--json", *texts]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = Predictor.from_directory(model_dir).predict(texts, explain=True)
    assert [p["label"] for p in printed] == [p.label for p in expected]
    assert printed[0]["kept_tokens"][0][0] == "[CLS]"
    assert printed[0]["probabilities"] == pytest.approx(expected[0].probabilities)


def test_predict_plain_output(model_dir, capsys):
    assert main(["predict", "--model", model_dir, "Not bad at all."]) == 0
    out = capsys.readouterr().out
    assert "FLOPs speedup" in out and "kept tokens per layer" in out


def test_evaluate_prints_metrics(model_dir, capsys):
    code = main(["evaluate", "--model", model_dir, "--data", "rotten_tomatoes", "--set", "limit=20", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_examples"] == 20
    assert 0.0 <= summary["accuracy"] <= 1.0 and summary["flops_speedup"] > 0
    assert len(summary["retention"]) == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--model", "/nonexistent", "x"], "model directory not found"),
        (["predict", "--model", "{model}"], "at least one non-empty text"),
        (["evaluate", "--model", "{model}", "--data", "bbc_news", "--set", "limit=5"], "labels"),
        (["evaluate", "--model", "{model}", "--set", "limt=5"], "unknown key"),
        (["train", "--config", "no-such-preset"], "config not found"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(model_dir, capsys, argv, message):
    argv = [a.replace("{model}", model_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adapler: error:" in err and message in err
    assert "Traceback" not in err


def test_evaluate_and_predict_with_int8(model_dir, capsys):
    argv = ["evaluate", "--model", model_dir, "--set", "limit=20", "--quantize", "int8"]
    assert main(argv) == 0
    assert "removal=packed, int8" in capsys.readouterr().out
    assert main(["predict", "--model", model_dir, "--quantize", "int8", "--json", "Dull."]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in ("rotten", "fresh")
    assert main(["predict", "--model", model_dir, "--quantize", "int8", "--device", "cuda", "Dull."]) == 2
    assert "CPU only" in capsys.readouterr().err
