"""Threshold calibration (adapler/calibration.py) on a tiny random model and ten sentences."""

from __future__ import annotations

import pytest
import torch

from adapler.batching import make_loader
from adapler.calibration import TargetUnreachable, apply_factor, calibrate
from adapler.evaluate import evaluate

TOLERANCE = 0.05


@pytest.fixture(scope="module")
def model(tiny_model_factory):
    """A tiny random model whose CPs score tokens unevenly (so the speedup grows gradually with
    the factor) and whose head separates inputs (so pruning can change predictions)."""
    model = tiny_model_factory(seed=0, num_labels=2)
    with torch.no_grad():
        for predictor in model.predictors:
            predictor.net[2].weight.mul_(6.0)
        torch.nn.init.normal_(model.backbone.classifier.weight, std=3.0)
    return model


@pytest.fixture
def loader(model, tokenizer, sentences, make_rows):
    """Ten rows labelled with the unpruned model's own predictions: accuracy 1 without removal,
    lower wherever removal flips a prediction."""
    texts = sentences * 2
    unlabelled = make_loader(make_rows(texts, labels=[0] * len(texts)), tokenizer, 4, 64)
    labels = evaluate(model, unlabelled, removal="none").predictions.tolist()
    return make_loader(make_rows(texts, labels=labels), tokenizer, 4, 64)


def test_factor_one_changes_nothing_and_the_original_is_untouched(model, sentence_batch):
    same = apply_factor(model, 1.0)
    assert same is not model
    want, got = model(**sentence_batch), same(**sentence_batch)
    assert torch.equal(got.logits, want.logits)
    assert torch.equal(got.kept_mask, want.kept_mask)

    etas = model.etas.detach().clone()
    stricter = apply_factor(model, 4.0)
    torch.testing.assert_close(stricter.etas.detach(), etas * 4.0)
    assert torch.equal(model.etas.detach(), etas)  # the copy was scaled, not the model
    fewer = stricter(**sentence_batch).kept_lengths[:, 0]  # layer 1 keeps a subset at a higher threshold
    assert bool((fewer <= want.kept_lengths[:, 0]).all()) and bool((fewer < want.kept_lengths[:, 0]).any())


def test_speedup_is_monotone_in_the_factor(model, loader):
    # max_drop=1 accepts every factor: the walk doubles from 1 up to saturation; a target far
    # under the trained speedup walks down to min_factor; targets on either side of the trained
    # speedup bisect. Together: a curve over four decades of factors.
    baseline = calibrate(model, loader, max_drop=1.0).baseline
    points = {}
    for goal in ({"max_drop": 1.0}, {"target_speedup": 0.1}, {"target_speedup": 1.0}, {"target_speedup": 3.0}):
        points.update({p.factor: p for p in calibrate(model, loader, **goal).points})
    curve = [points[f] for f in sorted(points)]
    assert curve[0].factor < 1 / 32 and curve[-1].factor > 64 and len(curve) > 15
    speedups = [p.flops_speedup for p in curve]
    assert speedups == sorted(speedups), [(p.factor, p.flops_speedup) for p in curve]
    assert speedups[-1] > 5 * baseline.flops_speedup and baseline.flops_speedup > speedups[0]  # it does move


def test_target_speedup_is_met_on_dev(model, loader):
    etas = model.etas.detach().clone()
    result = calibrate(model, loader, target_speedup=3.0, tolerance=TOLERANCE)
    assert torch.equal(model.etas.detach(), etas)  # restored after the search
    chosen = result.chosen
    assert result.baseline.factor == 1.0 and result.baseline.flops_speedup < 3.0 < chosen.flops_speedup
    assert chosen in result.points and [p.factor for p in result.points] == sorted(p.factor for p in result.points)

    measured = evaluate(apply_factor(model, chosen.factor), loader)  # independently of the search
    assert measured.flops_speedup >= 3.0
    assert measured.flops_speedup == pytest.approx(chosen.flops_speedup)
    assert measured.accuracy == pytest.approx(chosen.accuracy)
    # The smallest such factor, to the tolerance: a factor just under it misses the target.
    below = max((p for p in result.points if p.factor < chosen.factor), key=lambda p: p.factor)
    assert below.flops_speedup < 3.0 and chosen.factor / below.factor <= 1 + TOLERANCE


def test_target_under_the_trained_speedup_lowers_the_factor(model, loader):
    # Without removal the tiny model is slower than its backbone (the CPs cost 10%): 0.9x.
    assert evaluate(model, loader).flops_speedup > 1.0
    result = calibrate(model, loader, target_speedup=1.0, tolerance=TOLERANCE)
    assert result.chosen.factor < 1 and result.chosen.flops_speedup >= 1.0
    below = max((p for p in result.points if p.factor < result.chosen.factor), key=lambda p: p.factor)
    assert below.flops_speedup < 1.0 and result.chosen.factor / below.factor <= 1 + TOLERANCE


def test_max_drop_takes_the_fastest_point_within_the_accuracy_budget(model, loader):
    result = calibrate(model, loader, max_drop=0.1)
    floor = result.baseline.accuracy - 0.1
    assert result.baseline.accuracy == 1.0  # labels are the unpruned predictions
    allowed = [p for p in result.points if p.accuracy >= floor]
    assert result.chosen.accuracy >= floor
    assert result.chosen.flops_speedup == max(p.flops_speedup for p in allowed)
    assert result.chosen.flops_speedup > result.baseline.flops_speedup
    # The budget bound: a faster factor was tried and refused for its accuracy.
    assert any(p.accuracy < floor and p.flops_speedup > result.chosen.flops_speedup for p in result.points)


def test_unreachable_target_reports_the_best_reached(model, loader):
    with pytest.raises(TargetUnreachable, match=r"target speedup 1000x is unreachable.*best reached is") as info:
        calibrate(model, loader, target_speedup=1000.0)
    best = info.value.best
    assert best.flops_speedup == max(p.flops_speedup for p in info.value.points) < 1000
    assert max(p.factor for p in info.value.points) > 64  # the walk went on to saturation


@pytest.mark.parametrize(
    "goal", [{}, {"target_speedup": 2.0, "max_drop": 0.01}, {"target_speedup": 0.0}, {"max_drop": -0.1}]
)
def test_goal_must_be_one_valid_value(model, loader, goal):
    with pytest.raises(ValueError):
        calibrate(model, loader, **goal)


def _exact_goal(model, loader):
    """The paired goal with no drop allowed against the unpruned model (whose predictions are the
    labels here): a factor meets it only if it changes no prediction."""
    import numpy as np

    from adapler.calibration import PairedGoal

    labels = np.concatenate([batch["labels"].numpy() for batch in loader])
    return PairedGoal(evaluate(model, loader, removal="none").predictions, labels, tolerance=0.0, confidence=0.9)


def test_a_model_that_prunes_too_hard_walks_the_factor_down(model, loader):
    # A factor that prunes more than the labels (the unpruned model's own predictions) allow:
    too_far = min(p.factor for p in calibrate(model, loader, max_drop=0.1).points if p.accuracy < 1.0)
    harsh = apply_factor(model, too_far)
    assert calibrate(harsh, loader, max_drop=0.0).baseline.accuracy < 1.0
    result = calibrate(harsh, loader, paired=_exact_goal(model, loader))
    assert result.chosen.accuracy == 1.0 and result.chosen.factor < 1.0  # gave accuracy back
    assert max(p.factor for p in result.points) == 1.0  # never walked up
    gained = calibrate(model, loader, max_drop=1.0, flops_gain=2.0)  # every factor meets it: walks up
    assert max(p.factor for p in gained.points) > 1.0
    assert gained.baseline.flops_speedup == pytest.approx(
        2.0 * calibrate(model, loader, max_drop=0.0).baseline.flops_speedup
    )


def test_giving_accuracy_back_tries_quarter_octaves_before_halving(model, loader):
    """A model trained to prune reads best near its trained level (the full-data Rotten Tomatoes
    run: dev 0.779 at f = 1, 0.783 at 1/2, 0.800 at 0.88): halving alone steps over that."""
    from adapler.calibration import GIVE_BACK_STEP, _geometric, _walk
    from adapler.operating_points import CurvePoint

    curve = {1.0: 0.779, GIVE_BACK_STEP: 0.798, 0.5: 0.783}  # dev accuracy by factor; 0.7 elsewhere

    def measure(factor: float) -> CurvePoint:
        return CurvePoint(factor, curve.get(factor, 0.7), 1 / factor, 1.0)

    meets = lambda point: point.accuracy >= 0.795  # noqa: E731
    assert _walk(measure, meets, _geometric(0.5, 1 / 64)) is None  # halving never sees 0.798
    assert _walk(measure, meets, _geometric(GIVE_BACK_STEP, 0.5)) == (1.0, GIVE_BACK_STEP)
    # and calibrate() takes that walk: its first probe under 1 is a quarter octave
    harsh = apply_factor(
        model, min(p.factor for p in calibrate(model, loader, max_drop=0.1).points if p.accuracy < 1.0)
    )
    order = []
    calibrate(harsh, loader, paired=_exact_goal(model, loader), on_point=lambda point: order.append(point.factor))
    assert order[:2] == [1.0, GIVE_BACK_STEP]


def test_paired_goal_walks_up_to_the_last_factor_the_bound_certifies(model, loader):
    import numpy as np

    from adapler.calibration import PairedGoal
    from adapler.selection import paired_bound

    labels = np.concatenate([batch["labels"].numpy() for batch in loader])
    reference = evaluate(model, loader, removal="none").predictions  # = labels: the unpruned model
    goal = PairedGoal(reference, labels, tolerance=0.1, confidence=0.6)
    result = calibrate(model, loader, paired=goal)
    assert result.goal == "paired bound" and len(result.paired) == len(result.points)
    bounds = {c.factor: paired_bound(c, 0.6) for c in result.paired}
    assert bounds[result.chosen.factor] <= 0.1
    assert all(bounds[f] <= 0.1 for f in bounds if f <= result.chosen.factor)  # the walk's prefix
    assert any(bounds[f] > 0.1 for f in bounds if f > result.chosen.factor)  # stopped by a failing factor
    assert result.chosen.flops_speedup > result.baseline.flops_speedup
