"""Operating points (adapler/operating_points.py): the naming rule, resolving a request, the stored
form (config.json round trip, rescaling by calibration) and the search on a tiny model."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from adapler.batching import make_loader
from adapler.calibration import apply_factor, measure_operating_points
from adapler.evaluate import evaluate
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.operating_points import (
    CurvePoint,
    OperatingPointError,
    OperatingPoints,
    PointBudgets,
    read_operating_points,
    resolve,
)

# factor, dev accuracy, dev FLOPs speedup: pruning less (0.5) buys 0.1 point back; accuracy is
# not monotone (1.5 beats 1.2)
CURVE = [
    CurvePoint(f, a, s, 100.0 * s)
    for f, a, s in [
        (0.25, 0.800, 1.00),
        (0.5, 0.810, 1.30),
        (1.0, 0.809, 2.00),
        (1.2, 0.790, 2.50),
        (1.5, 0.801, 2.80),
        (2.0, 0.785, 3.50),
        (3.0, 0.770, 5.00),
        (4.0, 0.700, 8.00),
    ]
]


@pytest.fixture
def points() -> OperatingPoints:
    return OperatingPoints.from_curve(CURVE, PointBudgets(), "hand-made dev")


def test_names_follow_the_budgets(points):
    # accurate: fastest within 0.2 points of the best (0.810): 1.0 (0.809, 2x), not 0.5 (1.3x)
    # balanced: fastest within 1 point of accurate (>= 0.799): 1.5 (2.8x), not 1.2 (0.790)
    # fast: fastest within 3 points of accurate (>= 0.779): 2.0 (3.5x); 3.0 is 3.9 points down
    assert dict(points.named) == {"accurate": 1.0, "balanced": 1.5, "fast": 2.0}
    wider = OperatingPoints.from_curve(CURVE, PointBudgets(fast=0.05), "")
    assert wider.named["fast"] == 3.0


def test_stored_form_round_trips_with_the_naming_rule(points):
    assert OperatingPoints.from_dict(points.to_dict()) == points and points.confidence is None
    paired = dataclasses.replace(points, confidence=0.9)
    assert OperatingPoints.from_dict(paired.to_dict()).confidence == 0.9
    assert paired.rescaled(2.0).confidence == 0.9


def test_a_request_resolves_to_one_point(points):
    fast = resolve(points, operating_point="fast")
    assert (fast.name, fast.factor, fast.dev_accuracy, fast.dev_flops_speedup) == ("fast", 2.0, 0.785, 3.5)
    default = resolve(points)
    assert (default.name, default.factor, default.dev_accuracy) == ("default", 1.0, 0.809)
    assert resolve(points, operating_point="default") == default
    # the nearest curve point at or above the target, named when it is a named one
    assert resolve(points, target_speedup=2.6).factor == 1.5 and resolve(points, target_speedup=2.6).name == "balanced"
    assert resolve(points, target_speedup=4.0).name == "factor=3"
    assert resolve(points, target_speedup=2.0).name == "accurate"
    custom = resolve(points, factor=1.3)
    assert (custom.name, custom.factor, custom.dev_accuracy) == ("factor=1.3", 1.3, None)
    assert resolve(None, factor=1.3).factor == 1.3 and resolve(None).name == "default"
    # the fastest point within an accuracy budget of accurate (the load policy's choice)
    assert points.fastest_within(0.02).factor == 1.5 and points.fastest_within(0.04).factor == 3.0


@pytest.mark.parametrize(
    "request_, message",
    [
        ({"operating_point": "turbo"}, "unknown operating point 'turbo'"),
        ({"factor": -1.0}, "factor must be a finite number > 0"),
        ({"factor": 0.0}, "factor must be a finite number > 0"),
        ({"factor": float("nan")}, "factor must be a finite number > 0"),
        ({"target_speedup": 9.0}, "beyond the stored curve (at most 8.00x)"),
        ({"target_speedup": -2.0}, "target_speedup must be a finite number > 0"),
        ({"operating_point": "fast", "factor": 1.2}, "at most one of"),
    ],
)
def test_bad_requests_name_the_stored_points(points, request_, message):
    with pytest.raises(OperatingPointError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        resolve(points, **request_)
    if "at most one" not in message and "factor must" not in message:
        assert "stored points: accurate (factor 1, dev accuracy 0.8090, 2.00x), balanced" in str(err.value)


def test_a_model_without_points_takes_only_a_factor():
    with pytest.raises(OperatingPointError, match="no stored operating points"):
        resolve(None, operating_point="fast")
    with pytest.raises(OperatingPointError, match="no stored operating points"):
        resolve(None, target_speedup=2.0)


def test_points_round_trip_through_save_and_load(tiny_model_factory, points, tmp_path):
    model = tiny_model_factory(num_labels=2)
    assert model.operating_points is None
    model.operating_points = points
    model.save_pretrained(tmp_path / "m")
    stored = json.loads((tmp_path / "m" / "config.json").read_text())["adapler"]["operating_points"]
    assert stored["named"] == {"accurate": 1.0, "balanced": 1.5, "fast": 2.0} and len(stored["curve"]) == len(CURVE)
    loaded = AdapLeRForSequenceClassification.from_pretrained(tmp_path / "m")
    assert loaded.operating_points == points
    assert read_operating_points(tmp_path / "m") == points
    assert loaded.settings == model.settings  # the settings are read without the points

    # Calibrated by 2: same thresholds at half the factors, so the same dev figures.
    calibrated = apply_factor(loaded, 2.0)
    assert calibrated.operating_points.named == {"accurate": 0.5, "balanced": 0.75, "fast": 1.0}
    assert resolve(calibrated.operating_points).dev_accuracy == 0.785  # its default is the old fast
    assert loaded.operating_points == points  # the source is unchanged
    tiny_model_factory(num_labels=2).save_pretrained(tmp_path / "plain")
    assert AdapLeRForSequenceClassification.from_pretrained(tmp_path / "plain").operating_points is None


def test_measured_points_respect_their_budgets(tiny_model_factory, tokenizer, sentences, make_rows):
    """The search on a tiny model whose removal flips predictions: every named point is a measured
    one, within its budget, and measuring it again gives its figures."""
    model = tiny_model_factory(seed=2, num_labels=2)
    texts = sentences * 2 + [
        f"A film about {w}." for w in ["love", "war", "money", "time", "dogs", "cats", "rain", "trains", "music"]
    ]
    unlabelled = make_loader(make_rows(texts, labels=[0] * len(texts)), tokenizer, 8, 64)
    with torch.no_grad():
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(6.0)
        # the decision boundary amid the unpruned logits: pruning then flips predictions
        logits = torch.cat(
            [
                model(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, removal="none").logits
                for b in unlabelled
            ]
        )
        model.backbone.classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median() + 1e-4
    labels = evaluate(model, unlabelled, removal="none").predictions.tolist()
    loader = make_loader(make_rows(texts, labels=labels), tokenizer, 8, 64)
    etas = model.etas.detach().clone()
    budgets = PointBudgets(accurate=0.0, balanced=0.1, fast=0.3)
    seen = []
    points = measure_operating_points(model, loader, budgets, data="sentences", on_point=seen.append)
    assert torch.equal(model.etas.detach(), etas)  # restored
    assert [p.factor for p in points.curve] == sorted(p.factor for p in seen) and 1.0 in {p.factor for p in seen}
    assert min(p.factor for p in points.curve) < 1 < max(p.factor for p in points.curve)
    named = {name: points.point(name) for name in ("accurate", "balanced", "fast")}
    best = max(p.accuracy for p in points.curve)
    assert named["accurate"].dev_accuracy >= best - budgets.accurate
    for name in ("balanced", "fast"):
        assert named[name].dev_accuracy >= named["accurate"].dev_accuracy - getattr(budgets, name)
    speeds = [named[n].dev_flops_speedup for n in ("accurate", "balanced", "fast")]
    assert speeds == sorted(speeds) and speeds[-1] > speeds[0], named  # the knob moves
    # fast is the edge: the next factor measured above it leaves the budget
    above = [p for p in points.curve if p.factor > named["fast"].factor]
    assert above and above[0].accuracy < named["accurate"].dev_accuracy - budgets.fast
    check = evaluate(apply_factor(model, named["fast"].factor), loader)
    assert check.accuracy == pytest.approx(named["fast"].dev_accuracy)
    assert check.flops_speedup == pytest.approx(named["fast"].dev_flops_speedup)


@pytest.fixture
def points_model_dir(tiny_model_factory, points, tmp_path):
    """A tiny model whose CPs remove tokens, with the hand-made points stored."""
    model = tiny_model_factory(num_labels=2)
    with torch.no_grad():
        model.etas.copy_(torch.tensor([0.2, 0.3, 0.4]))
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(6.0)
    model.operating_points = points
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_predictor_runs_each_text_at_its_point(points_model_dir, sentences, points):
    """Predictor: one knob for all texts, or one point per text in the same batches; each result
    names its point; a text's result does not depend on the points of the others."""
    from adapler.inference import Predictor

    predictor = Predictor.from_directory(points_model_dir, batch_size=8)
    assert predictor.operating_points == points

    default = predictor.predict(sentences)
    fast = predictor.predict(sentences, operating_point="fast")
    assert {p.operating_point.name for p in default} == {"default"}
    assert fast[0].to_dict()["operating_point"] == {
        "name": "fast",
        "factor": 2.0,
        "dev_accuracy": 0.785,
        "dev_flops_speedup": 3.5,
    }
    assert sum(map(sum, (p.kept_lengths for p in fast))) < sum(map(sum, (p.kept_lengths for p in default)))
    assert sum(p.kept_lengths[-1] for p in default) > len(sentences)  # the default keeps more than [CLS]
    assert predictor.predict(sentences, target_speedup=3.0)[0].operating_point.name == "fast"
    assert predictor.predict(sentences, factor=2.0)[0].kept_lengths == fast[0].kept_lengths

    # mixed: alternate texts at default and fast, in the same batches
    mixed_points = [predictor.resolve("fast" if i % 2 else None) for i in range(len(sentences))]
    mixed = predictor.predict(sentences, points=mixed_points)
    for i, p in enumerate(mixed):
        want = fast[i] if i % 2 else default[i]
        assert p.operating_point == want.operating_point and p.kept_lengths == want.kept_lengths
        assert all(abs(p.probabilities[k] - want.probabilities[k]) < 1e-5 for k in p.probabilities)

    with pytest.raises(OperatingPointError, match="stored points: accurate"):
        predictor.predict(sentences, operating_point="turbo")
    backbone = Predictor.from_directory(points_model_dir, removal="none")
    assert backbone.predict(sentences[:1])[0].operating_point is None
    with pytest.raises(OperatingPointError, match="plain backbone"):
        backbone.predict(sentences[:1], operating_point="fast")


def test_onnx_runtime_reads_the_points_and_runs_mixed_factors_like_torch(points_model_dir, sentences, points):
    """The ONNX Runtime model takes the same per-example eta_factors: a batch mixing points gives
    torch's kept tokens, and the points load with it."""
    pytest.importorskip("onnxruntime")
    from adapler.inference import Predictor

    torch_predictor = Predictor.from_directory(points_model_dir, batch_size=8)
    onnx_predictor = Predictor.from_directory(points_model_dir, batch_size=8, runtime="onnx")
    assert onnx_predictor.model.operating_points == points
    mixed = [torch_predictor.resolve("fast" if i % 2 else None) for i in range(len(sentences))]
    want, got = torch_predictor.predict(sentences, points=mixed), onnx_predictor.predict(sentences, points=mixed)
    assert [p.kept_lengths for p in got] == [p.kept_lengths for p in want]
    assert [p.operating_point.name for p in got] == ["default", "fast"] * (len(sentences) // 2) + ["default"]
    assert all(abs(g.probabilities[k] - w.probabilities[k]) < 1e-4 for g, w in zip(got, want) for k in w.probabilities)


def test_paired_naming_stops_balanced_where_the_bound_fails():
    import numpy as np

    from adapler.operating_points import CurvePoint, PointBudgets, name_points, name_points_paired

    labels = np.zeros(2000, dtype=int)
    base = np.zeros(2000, dtype=int)
    base[:200] = 1  # 90% accurate
    churn = base.copy()
    churn[200:300], churn[:90] = 1, 0  # 100 newly wrong, 90 newly right: 0.5 points, 9.5% changed
    steady = base.copy()
    steady[200:206] = 1  # 6 newly wrong: 0.3 points
    curve = [CurvePoint(1.0, 0.9, 2.0, 1.0), CurvePoint(1.5, 0.897, 2.5, 1.0), CurvePoint(2.0, 0.895, 3.0, 1.0)]
    predictions = {1.0: base, 1.5: steady, 2.0: churn}
    budgets = PointBudgets()
    assert name_points(curve, budgets)["balanced"].factor == 2.0  # marginal: 0.5 points, within 1
    named = name_points_paired(curve, predictions, labels, budgets, confidence=0.9)
    assert named["accurate"].factor == 1.0 and named["balanced"].factor == 1.5
    assert named["fast"].factor == 2.0  # a 3-point budget covers the churn's bound
