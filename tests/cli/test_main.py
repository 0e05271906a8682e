"""The `adapler` command line: predict and evaluate on a saved tiny model, and clear errors."""

from __future__ import annotations

import copy
import dataclasses
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


def test_evaluate_against_itself_changes_nothing_and_prints_the_paired_comparison(model_dir, capsys):
    argv = ["evaluate", "--model", model_dir, "--data", "rotten_tomatoes", "--set", "limit=20", "--runtime", "torch"]
    assert main([*argv, "--removal", "none", "--against", model_dir, "--json"]) == 0
    paired = json.loads(capsys.readouterr().out)["paired"]
    assert paired["examples"] == 20 and paired["changed"] == paired["newly_wrong"] == paired["drop"] == 0
    assert main([*argv, "--against", model_dir]) == 0
    out = capsys.readouterr().out
    assert "paired on the same 20 examples" in out and "upper bound" in out and "error ratio" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--model", "/nonexistent", "x"], "model directory not found"),
        (["predict", "--model", "{model}"], "at least one non-empty text"),
        (["evaluate", "--model", "{model}", "--data", "bbc_news", "--set", "limit=5"], "labels"),
        (["evaluate", "--model", "{model}", "--set", "limt=5"], "unknown key"),
        (["train", "--config", "no-such-preset"], "config not found"),
        (
            ["evaluate", "--model", "{model}", "--set", "limit=5", "--against", "{model}", "--confidence", "1.5"],
            "--confidence",
        ),
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
    assert "removal=packed, runtime=onnx, int8" in capsys.readouterr().out  # auto: ONNX Runtime on CPU
    assert main(["predict", "--model", model_dir, "--quantize", "int8", "--json", "Dull."]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in ("rotten", "fresh")
    assert main(["predict", "--model", model_dir, "--quantize", "int8", "--device", "cuda", "Dull."]) == 2
    assert "CPU only" in capsys.readouterr().err


def test_runtime_onnx_predicts_and_evaluates_like_torch(model_dir, capsys):
    texts = ["A gripping, beautifully acted film.", "Dull.", "Not bad at all."]
    outputs = {}
    for runtime in ("torch", "onnx"):
        assert main(["predict", "--model", model_dir, "--runtime", runtime, "--json", *texts]) == 0
        predicted = json.loads(capsys.readouterr().out)
        argv = ["evaluate", "--model", model_dir, "--set", "limit=20", "--runtime", runtime, "--json"]
        assert main(argv) == 0
        outputs[runtime] = (predicted, json.loads(capsys.readouterr().out))
    (torch_pred, torch_eval), (onnx_pred, onnx_eval) = outputs["torch"], outputs["onnx"]
    assert [p["label"] for p in onnx_pred] == [p["label"] for p in torch_pred]
    assert [p["kept_lengths"] for p in onnx_pred] == [p["kept_lengths"] for p in torch_pred]
    assert onnx_eval["accuracy"] == torch_eval["accuracy"]
    assert onnx_eval["flops_speedup"] == pytest.approx(torch_eval["flops_speedup"])


def test_export_then_load_without_exporting_again(model_dir, tmp_path, capsys):
    output = tmp_path / "exported"
    assert main(["export", "--model", model_dir, "--output", str(output), "--quantize", "int8"]) == 0
    assert "next: adapler predict" in capsys.readouterr().out
    assert (output / "onnx" / "manifest.json").is_file() and (output / "onnx" / "backbone.int8.onnx").is_file()
    assert main(["predict", "--model", str(output), "--runtime", "onnx", "--quantize", "int8", "--json", "Dull."]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in ("rotten", "fresh")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--model", "{model}", "--runtime", "onnx", "--device", "cuda", "x"], "no CUDAExecutionProvider"),
        (["predict", "--model", "{model}", "--runtime", "onnx", "--removal", "masked", "x"], "'packed' or 'none'"),
        (["export", "--model", "/nonexistent", "--output", "{tmp}"], "model directory not found"),
    ],
)
def test_runtime_errors_are_one_line(model_dir, tmp_path, capsys, argv, message):
    argv = [a.replace("{model}", model_dir).replace("{tmp}", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adapler: error:" in err and message in err and "Traceback" not in err


def test_predict_at_an_operating_point(tiny_model_factory, save_review_model, model_dir, tmp_path, capsys):
    """--operating-point / --target-speedup / --factor run the texts at that point and say which;
    a point the model does not have is one line naming the stored ones."""
    import torch

    from adapler.operating_points import CurvePoint, OperatingPoints, PointBudgets

    model = tiny_model_factory(num_labels=2)
    with torch.no_grad():
        model.etas.copy_(torch.tensor([0.2, 0.3, 0.4]))
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(6.0)
    curve = [CurvePoint(1.0, 0.80, 1.5, 100.0), CurvePoint(2.0, 0.79, 2.5, 150.0), CurvePoint(4.0, 0.78, 4.0, 200.0)]
    model.operating_points = OperatingPoints.from_curve(curve, PointBudgets(), "dev")
    directory = save_review_model(model, tmp_path / "with-points")
    text = "The plot wanders for two hours, and the dialogue is stiff."

    assert main(["predict", "--model", directory, "--json", text]) == 0
    default = json.loads(capsys.readouterr().out)[0]
    assert default["operating_point"] == {
        "name": "default",
        "factor": 1.0,
        "dev_accuracy": 0.8,
        "dev_flops_speedup": 1.5,
    }
    assert main(["predict", "--model", directory, "--json", "--operating-point", "fast", text]) == 0
    fast = json.loads(capsys.readouterr().out)[0]
    assert fast["operating_point"]["name"] == "fast" and fast["operating_point"]["factor"] == 4.0
    assert sum(fast["kept_lengths"]) < sum(default["kept_lengths"])
    assert main(["predict", "--model", directory, "--target-speedup", "2", text]) == 0
    assert "operating point: balanced (factor 2, dev accuracy 0.7900, 2.50x)" in capsys.readouterr().out

    for argv, message in (
        ([directory, "--operating-point", "turbo"], "unknown operating point 'turbo'; stored points: accurate"),
        ([directory, "--target-speedup", "9"], "beyond the stored curve"),
        ([directory, "--factor", "-1"], "factor must be a finite number > 0"),
        ([model_dir, "--operating-point", "fast"], "no stored operating points"),
    ):
        assert main(["predict", "--model", *argv, text]) == 2
        err = capsys.readouterr().err
        assert err.count("adapler: error:") == 1 and message in err and "Traceback" not in err, err


def test_a_model_at_a_shorter_budget_reports_its_speedup_against_its_reference(
    tmp_path, tiny_model_factory, save_review_model, capsys
):
    model = tiny_model_factory(num_labels=2)
    model.tokenizer = copy.deepcopy(model.tokenizer)
    save_review_model(model, tmp_path / "short")
    model.tokenizer.model_max_length = 12  # chosen at a 12-token budget, against a 64-token backbone
    model.settings = dataclasses.replace(model.settings, reference_max_length=64)
    model.save_pretrained(tmp_path / "short")
    directory = str(tmp_path / "short")
    assert main(["evaluate", "--model", directory, "--set", "limit=20", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["input_budget"] == 12
    assert summary["flops_speedup"] > summary["flops_speedup_at_budget"] > 0  # reviews are longer than 12 tokens
    assert main(["evaluate", "--model", directory, "--set", "limit=20"]) == 0
    assert "against the backbone at 64 tokens" in capsys.readouterr().out
    # and each text's speedup in predict, against the backbone on the text at 64 tokens
    text = "The plot wanders for two hours, the dialogue is stiff, and not even the score can save it."
    at_reference = Predictor.from_directory(directory, runtime="torch").predict([text])[0]
    model.settings = dataclasses.replace(model.settings, reference_max_length=None)
    model.save_pretrained(tmp_path / "own")
    at_budget = Predictor.from_directory(tmp_path / "own", runtime="torch").predict([text])[0]
    assert at_reference.input_tokens == at_budget.input_tokens == 12
    assert at_reference.flops_speedup > at_budget.flops_speedup
