"""Threshold calibration after training: trade accuracy for speed by scaling the etas.

A trained AdapLeR model keeps token i at layer l iff its score i~_i >= eta_l / n (spec section
5). The etas are stored as they are used: ``model.etas`` is an (L,) parameter in the threshold's
own space (no log or sigmoid transform), so multiplying it by a factor f multiplies every
layer's effective threshold eta_l / n by f. f > 1 drops more tokens (faster), f < 1 fewer.
Calibration picks ONE global f on the dev split, without retraining: the per-layer balance the
length loss learnt is kept, only its overall level moves. A calibrated eta may exceed
``settings.eta_max`` (a threshold above the uniform level 1/n is meaningful at inference);
training the model further would clip it back.

Search. Every probe is one pass of :func:`adapler.evaluate.evaluate` over the dev loader with
removal="packed": dev accuracy, FLOPs speedup (spec section 6) and measured examples/s.
  1. Geometric walk from f = 1, doubling (or halving) until the goal flips between met and not
     met. Upwards it stops at the saturation factor max_input_length / min(eta): from there on
     every threshold is >= 1 and each layer keeps only [CLS], so no larger factor is faster.
     Downwards it stops at ``min_factor``. Walking down for the ``paired`` goal it takes quarter
     octaves (:data:`GIVE_BACK_STEP`): a model trained to prune reads best near its trained
     level, and halving can step over that.
  2. Bisection (geometric midpoints) between the last factor on one side of the flip and the
     first on the other, until they are within ``tolerance`` (relative) of each other.
Speedup grows with f: layer 1 keeps a subset of its tokens when its threshold rises, and later
layers in practice follow (not a theorem: their scores depend on what survived). The search
never relies on it for its answer: the chosen factor is always one that was measured to meet
the goal.

Goals (exactly one):
  target_speedup=X  the smallest factor whose dev FLOPs speedup is >= X (the upper end of the
                    bisection bracket): reach X while dropping as few tokens as possible. If the
                    model already beats X at f = 1, the walk goes down and gives accuracy back.
                    No factor up to saturation reaching X raises :class:`TargetUnreachable`.
  max_drop=D        the largest dev FLOPs speedup among the explored factors whose dev accuracy
                    is >= (dev accuracy at f = 1) - D. f = 1 always qualifies, so this always
                    succeeds; the walk goes up only.
  paired=PairedGoal the paired rule of :mod:`adapler.selection`: the fastest factor whose upper
                    confidence bound of the paired accuracy drop against the reference's dev
                    predictions (and the same weights with removal off) is within the
                    tolerance, walking the factors up from the smallest measured and stopping
                    at the first that fails (fixed-sequence testing: the walk's order is the
                    factor, never an accuracy). Searched up from f = 1 when it meets the goal,
                    else down (a model trained to prune too hard gives accuracy back). The
                    bisection picks its midpoints by
                    earlier outcomes, a handful of extra looks that the walk does not correct
                    for. If no factor qualifies, the one with the smallest bound is chosen.

``flops_gain`` multiplies every measured speedup: a model at a shorter input budget than the
backbone it is compared with (:func:`adapler.evaluate.budget_gain`).

:func:`measure_operating_points` measures a curve for several budgets at once and names the
model's operating points on it (:mod:`adapler.operating_points`): the per-request speed knob.
:func:`attach_operating_points` is the step ``adapler run`` and ``adapler calibrate --points``
take: a model's points on its dev split, stored with the model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from adapler.evaluate import budget_gain, evaluate, unwrap
from adapler.modeling import AdapLeRForSequenceClassification
from adapler.operating_points import (
    CurvePoint,
    OperatingPoints,
    PointBudgets,
    budget_floor,
    name_points,
    name_points_paired,
)
from adapler.paired import LabelFree, compare
from adapler.selection import Candidate, certified, select

GIVE_BACK_STEP = 2**-0.25  # walking down for the paired goal: quarter octaves


@dataclass(frozen=True)
class PairedGoal:
    """The paired rule as a calibration goal (:func:`calibrate`): what each factor's dev
    predictions (loader order) are compared with, and the promise (:mod:`adapler.selection`)."""

    reference: np.ndarray  # (N,) the reference's dev predictions (stage 1: the backbone fine-tuned)
    labels: np.ndarray  # (N,) dev labels
    tolerance: float  # fraction (0.01 = one point)
    confidence: float  # of each point in the walk (adapler.selection.certified: no correction needed)
    relative_tolerance: float | None = None
    unpruned: np.ndarray | None = None  # (N,) the same weights with removal off; None: not compared
    label_free: Callable[[float], LabelFree] | None = None  # factor -> changes on texts without labels

    def candidate(self, factor: float, predictions: np.ndarray, accuracy: float, speedup: float) -> Candidate:
        """One measured factor as a selection candidate (trial "calibration", epoch 0)."""
        return Candidate(
            "calibration",
            0,
            accuracy,
            speedup,
            factor=factor,
            paired=compare(self.reference, predictions, self.labels),
            unpruned_paired=None if self.unpruned is None else compare(self.unpruned, predictions, self.labels),
            label_free=None if self.label_free is None else self.label_free(factor),
        )


@dataclass(frozen=True)
class Calibration:
    points: list[CurvePoint]  # every factor tried, by factor ascending
    chosen: CurvePoint
    baseline: CurvePoint  # factor 1: the model as trained
    target_speedup: float | None  # the goal, as given to calibrate()
    max_drop: float | None
    paired: list[Candidate] | None = None  # goal paired: every factor as a candidate with its comparisons, by factor

    @property
    def goal(self) -> str:
        if self.paired is not None:
            return "paired bound"
        if self.target_speedup is not None:
            return f"target_speedup={self.target_speedup:g}"
        return f"max_drop={self.max_drop:g}"


class TargetUnreachable(ValueError):
    """No factor up to saturation reaches the target speedup; ``best`` is the fastest point."""

    def __init__(self, target_speedup: float, points: list[CurvePoint]):
        self.points = points
        self.best = max(points, key=lambda p: (p.flops_speedup, -p.factor))
        super().__init__(
            f"target speedup {target_speedup:g}x is unreachable by scaling the thresholds: the best "
            f"reached is {self.best.flops_speedup:.2f}x at factor {self.best.factor:g} "
            f"(dev accuracy {self.best.accuracy:.4f}), where every layer keeps (almost) only [CLS]"
        )


@contextlib.contextmanager
def scaled_etas(model: AdapLeRForSequenceClassification, factor: float) -> Iterator[None]:
    """Multiply the model's etas by ``factor`` in place for the duration of the block."""
    etas = unwrap(model).etas
    original = etas.detach().clone()
    with torch.no_grad():
        etas.mul_(factor)
    try:
        yield
    finally:
        with torch.no_grad():
            etas.copy_(original)  # exactly the trained values, not a division that may round


def apply_factor(model: AdapLeRForSequenceClassification, factor: float) -> AdapLeRForSequenceClassification:
    """A copy of ``model`` whose etas are multiplied by ``factor`` (and ``settings.eta_factor``, so
    that its config.json records it; stored operating points are rescaled to the new etas);
    ``model`` is left unchanged."""
    calibrated = copy.deepcopy(unwrap(model))
    with torch.no_grad():
        calibrated.etas.mul_(factor)
    calibrated.settings = dataclasses.replace(calibrated.settings, eta_factor=calibrated.settings.eta_factor * factor)
    if calibrated.operating_points is not None:
        calibrated.operating_points = calibrated.operating_points.rescaled(factor)
    return calibrated


def saturation_factor(model: AdapLeRForSequenceClassification, max_input_length: int) -> float:
    """The factor from which every layer keeps only [CLS]: eta_l * f / n >= 1 for every layer l
    and every length n <= max_input_length, and no normalised score exceeds 1."""
    smallest = float(unwrap(model).etas.detach().min())
    if smallest <= 0:
        raise ValueError(f"the etas must be positive to be scaled, got a smallest eta of {smallest}")
    return max_input_length / smallest


def calibrate(
    model: AdapLeRForSequenceClassification,
    loader,
    target_speedup: float | None = None,
    max_drop: float | None = None,
    tolerance: float = 0.05,
    min_factor: float = 1 / 64,
    on_point: Callable[[CurvePoint], None] | None = None,
    flops_gain: float = 1.0,
    paired: PairedGoal | None = None,
) -> Calibration:
    """Search one global eta factor on ``loader`` (the dev split) for the goal; see the module
    docstring. ``on_point`` is called with each point as it is measured (progress). The model's
    etas are restored afterwards; build the calibrated model with :func:`apply_factor`."""
    if sum(goal is not None for goal in (target_speedup, max_drop, paired)) != 1:
        raise ValueError("give exactly one of target_speedup, max_drop and paired")
    if target_speedup is not None and not target_speedup > 0:
        raise ValueError(f"target_speedup must be > 0, got {target_speedup}")
    if max_drop is not None and not 0 <= max_drop <= 1:
        raise ValueError(f"max_drop must be in [0, 1], got {max_drop}")
    if not tolerance > 0 or not 0 < min_factor < 1:
        raise ValueError("need tolerance > 0 and 0 < min_factor < 1")

    measure = _Probe(model, loader, on_point, flops_gain)
    curve = measure.curve
    baseline = measure(1.0)
    ceiling = max(saturation_factor(model, _max_input_length(loader)), 1.0)  # <= 1: saturated as trained
    if paired is not None:

        def candidates() -> list[Candidate]:
            return [
                paired.candidate(p.factor, measure.predictions[p.factor], p.accuracy, p.flops_speedup) for p in curve()
            ]

        def meets(point: CurvePoint) -> bool:  # the walk's verdict over the points measured so far
            passed = certified(candidates(), paired.confidence, paired.tolerance, paired.relative_tolerance)
            return any(c.factor == point.factor for c in passed)

        upwards = meets(baseline)
        flip = _walk(measure, meets, _geometric(2.0, ceiling) if upwards else _geometric(GIVE_BACK_STEP, min_factor))
        if flip is not None:
            _bisect(*flip, measure, meets, tolerance)
        final = candidates()
        choice = select(final, 0.0, paired.tolerance, paired.confidence, paired.relative_tolerance).chosen
        return Calibration(curve(), measure(choice.factor), baseline, None, None, final)
    if target_speedup is not None:

        def meets(point: CurvePoint) -> bool:
            return point.flops_speedup >= target_speedup

        fast_enough = meets(baseline)
        flip = _walk(measure, meets, _geometric(0.5, min_factor) if fast_enough else _geometric(2.0, ceiling))
        if flip is None and not fast_enough:
            raise TargetUnreachable(target_speedup, curve())
        # No flip going down: every factor down to min_factor is fast enough; keep the smallest.
        chosen = measure(min_factor) if flip is None else measure(_bisect(*flip, measure, meets, tolerance))
    else:
        floor = baseline.accuracy - max_drop

        def meets(point: CurvePoint) -> bool:
            return point.accuracy >= floor

        flip = _walk(measure, meets, _geometric(2.0, ceiling))
        if flip is not None:
            _bisect(*flip, measure, meets, tolerance)
        # Accuracy need not fall monotonically: take the fastest of all points that qualify.
        chosen = max((p for p in curve() if meets(p)), key=lambda p: (p.flops_speedup, -p.factor))
    return Calibration(curve(), chosen, baseline, target_speedup, max_drop)


class _Probe:
    """Measures factors on the dev loader, each once: one pass of :func:`evaluate` with the etas
    scaled (``on_point`` hears of each new point). The first call warms up on one batch: one-off
    costs (fused QKV cache, allocator) would slow the first row."""

    def __init__(self, model, loader, on_point: Callable[[CurvePoint], None] | None, flops_gain: float = 1.0):
        self.model, self.loader, self.on_point, self.flops_gain = model, loader, on_point, flops_gain
        self.measured: dict[float, CurvePoint] = {}
        self.predictions: dict[float, np.ndarray] = {}  # factor -> (N,) dev predictions, loader order

    def __call__(self, factor: float) -> CurvePoint:
        if not self.measured:
            evaluate(self.model, [next(iter(self.loader))], removal="packed")
        if factor not in self.measured:
            with scaled_etas(self.model, factor):
                result = evaluate(self.model, self.loader, removal="packed")
            self.measured[factor] = CurvePoint(
                factor, result.accuracy, result.flops_speedup * self.flops_gain, result.examples_per_s
            )
            self.predictions[factor] = result.predictions
            if self.on_point is not None:
                self.on_point(self.measured[factor])
        return self.measured[factor]

    def curve(self) -> list[CurvePoint]:
        return [self.measured[f] for f in sorted(self.measured)]


NOTHING_PRUNED = 1.02  # a dev FLOPs speedup under this: (almost) every token stays


def measure_operating_points(
    model: AdapLeRForSequenceClassification,
    loader,
    budgets: PointBudgets | None = None,
    data: str = "",
    tolerance: float = 0.05,
    min_factor: float = 1 / 8,
    on_point: Callable[[CurvePoint], None] | None = None,
    flops_gain: float = 1.0,
    confidence: float | None = None,
) -> OperatingPoints:
    """Measure the model's curve on ``loader`` (the dev split) and name its operating points
    (:mod:`adapler.operating_points`); the model's etas are left as they are.

    The search: from f = 1, halve while tokens are still pruned (down to ``min_factor``): does
    pruning less buy accuracy back? Then double while the accuracy stays within the widest
    budget (up to saturation). Then, for accurate, balanced and fast in turn, bisect between the
    named point and the next factor measured above it (the one that left the budget), to within
    ``tolerance`` (relative). Accuracy need not be monotone in the factor: the names are always
    given over every point measured. ``flops_gain``: as in :func:`calibrate`. With ``confidence``,
    balanced and fast are named by the paired rule (:func:`adapler.operating_points.name_points_paired`)."""
    budgets = budgets or PointBudgets()
    measure = _Probe(model, loader, on_point, flops_gain)
    baseline = measure(1.0)
    if baseline.flops_speedup > NOTHING_PRUNED * flops_gain:
        _walk(measure, lambda p: p.flops_speedup > NOTHING_PRUNED * flops_gain, _geometric(0.5, min_factor))

    def within(name: str) -> Callable[[CurvePoint], bool]:  # the budget's floor over the points measured so far
        return lambda point: point.accuracy >= budget_floor(name, measure.curve(), budgets)

    if within("fast")(baseline):
        _walk(measure, within("fast"), _geometric(2.0, max(saturation_factor(model, _max_input_length(loader)), 1.0)))
    for name in ("accurate", "balanced", "fast"):
        point = name_points(measure.curve(), budgets)[name]
        above = [p for p in measure.curve() if p.factor > point.factor]
        if above and not within(name)(above[0]):
            _bisect(point.factor, above[0].factor, measure, within(name), tolerance)
    if confidence is None:
        return OperatingPoints.from_curve(measure.curve(), budgets, data)
    labels = np.concatenate([batch["labels"].numpy() for batch in loader])
    named = name_points_paired(measure.curve(), measure.predictions, labels, budgets, confidence)
    return OperatingPoints(
        tuple(measure.curve()), {name: p.factor for name, p in named.items()}, budgets, data, confidence
    )


def dev_description(data_name: str, rows: pd.DataFrame) -> str:
    """How a curve names the rows it was measured on: "<data> dev (<n> examples)"."""
    return f"{data_name} dev ({len(rows)} examples)"


def attach_operating_points(
    model: AdapLeRForSequenceClassification,
    loader,
    rows: pd.DataFrame,
    data_name: str,
    budgets: PointBudgets | None = None,
    engine=None,
    on_point: Callable[[CurvePoint], None] | None = None,
    confidence: float | None = None,
) -> OperatingPoints:
    """Measure ``model``'s operating points on ``loader`` (over ``rows``, the dev split of
    ``data_name``) and store them in ``model.operating_points`` (saved with its config.json;
    the etas are left as they are). ``engine``: what runs the dev passes, default ``model``
    (e.g. its ONNX Runtime twin, so that the curve's examples/s are the deployed runtime's).
    Speedups are against the backbone at the length the model was chosen against
    (:func:`adapler.evaluate.budget_gain`). ``confidence``: name the points by the paired-bound
    rule (:func:`measure_operating_points`), else by their dev accuracy."""
    points = measure_operating_points(
        engine or model,
        loader,
        budgets,
        data=dev_description(data_name, rows),
        on_point=on_point,
        flops_gain=budget_gain(model, rows),
        confidence=confidence,
    )
    model.operating_points = points
    return points


def _geometric(step: float, limit: float, start: float = 1.0) -> Iterator[float]:
    """start * step, start * step ** 2, ... up (step > 1) or down (step < 1) to ``limit``; the
    last factor is ``limit`` exactly."""
    factor = start
    while factor != limit:
        factor *= step
        if (factor >= limit * (1 - 1e-9)) if step > 1 else (factor <= limit * (1 + 1e-9)):
            factor = limit
        yield factor


def _walk(
    measure: Callable[[float], CurvePoint], meets: Callable[[CurvePoint], bool], factors: Iterable[float]
) -> tuple[float, float] | None:
    """Measure ``factors`` in turn (after 1) until ``meets`` differs from its value at 1. Returns
    (the factor before, the factor after) that change, or None if it never changes."""
    start = meets(measure(1.0))
    previous = 1.0
    for factor in factors:
        if meets(measure(factor)) != start:
            return previous, factor
        previous = factor
    return None


def _bisect(
    a: float, b: float, measure: Callable[[float], CurvePoint], meets: Callable[[CurvePoint], bool], tolerance: float
) -> float:
    """Narrow [a, b] (one end meets the goal, the other not) at geometric midpoints until the ends
    are within a factor 1 + tolerance; returns the end that meets the goal."""
    good, bad = (a, b) if meets(measure(a)) else (b, a)
    while max(good, bad) / min(good, bad) > 1 + tolerance:
        middle = math.sqrt(good * bad)
        if meets(measure(middle)):
            good = middle
        else:
            bad = middle
    return good


def _max_input_length(loader) -> int:
    """Longest unpadded input of the loader (tokens, [CLS] and [SEP] counted)."""
    return max(int(batch["attention_mask"].sum(-1).max()) for batch in loader)
