"""Operating points: named places on one model's speed/accuracy curve, stored with the model.

Scaling every eta by one factor f moves a trained model along its speed/accuracy curve without
retraining (:mod:`adapler.calibration`): f > 1 drops more tokens. The forward takes a factor per
example (``eta_factors``), so each request can pick its own point. Factors here are relative to
the model *as saved* (its etas already include any calibration, ``settings.eta_factor``):
factor 1 is the saved model.

Calibration (:func:`adapler.calibration.measure_operating_points`) measures a curve on dev
(factor, dev accuracy, dev FLOPs speedup, examples/s) and names three points on it by accuracy
budgets (:class:`PointBudgets`, absolute dev accuracy):

  accurate  the fastest point within ``budgets.accurate`` (0.2 points) of the best dev accuracy
            on the curve: the model as trained when pruning less buys nothing, else the least
            pruning that gets that accuracy back.
  balanced  the fastest point within ``budgets.balanced`` (1 point) of ``accurate``.
  fast      the fastest point within ``budgets.fast`` (3 points by default) of ``accurate``.

With the dev predictions of every curve point at hand (:func:`name_points_paired`), balanced and
fast are named by the paired rule of :mod:`adapler.selection` instead: walking the factors up from
accurate, the last point whose upper ``confidence`` bound of the paired drop against accurate's own
predictions is within the budget (the curve is still searched by accuracy).

"Fastest" is the highest dev FLOPs speedup; ties go to the more accurate, then the smaller
factor. The model keeps the named factors and the raw curve in ``config.json`` under
``adapler.operating_points`` (:meth:`OperatingPoints.to_dict`).

A request resolves to one :class:`OperatingPoint` (:func:`resolve`): a stored name, the nearest
curve point at or above a target speedup, or a plain factor; none of them is the ``default``
point, the model as saved. Bad values raise :class:`OperatingPointError`, whose message names
the stored points.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapler.config import AdapLeRSettings, ConfigError
from adapler.paired import compare
from adapler.selection import Candidate, certified

DEFAULT = "default"  # the point a request that names none runs at: the model as saved (factor 1)
NAMES = ("accurate", "balanced", "fast")


@dataclass(frozen=True)
class CurvePoint:
    """One factor, measured on the dev split."""

    factor: float  # every eta multiplied by this
    accuracy: float  # dev accuracy
    flops_speedup: float  # backbone FLOPs / AdapLeR FLOPs over the dev split
    examples_per_s: float  # measured throughput of that dev pass (noisy; FLOPs are not)


@dataclass
class PointBudgets:
    """Accuracy budgets that name the points (absolute dev accuracy, 0.01 = one point)."""

    accurate: float = 0.002  # below the best dev accuracy on the curve
    balanced: float = 0.01  # below accurate's
    fast: float = 0.03  # below accurate's

    def __post_init__(self) -> None:
        for name in NAMES:
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(f"operating point budget {name} must be in [0, 1] (dev accuracy), got {value}")


@dataclass(frozen=True)
class OperatingPoint:
    """The point a text ran at: its name, its factor and, when the curve holds that factor, its
    dev figures."""

    name: str
    factor: float
    dev_accuracy: float | None = None
    dev_flops_speedup: float | None = None

    def describe(self) -> str:
        figures = (
            f", dev accuracy {self.dev_accuracy:.4f}, {self.dev_flops_speedup:.2f}x"
            if self.dev_accuracy is not None and self.dev_flops_speedup is not None
            else ""
        )
        return f"{self.name} (factor {self.factor:.4g}{figures})"


class OperatingPointError(ValueError):
    """An operating point that the model does not have (unknown name, bad factor, target beyond
    the curve): one line that names the stored points."""


def _fastest(points: Sequence[CurvePoint]) -> CurvePoint:
    return max(points, key=lambda p: (p.flops_speedup, p.accuracy, -p.factor))


def budget_floor(name: str, curve: Sequence[CurvePoint], budgets: PointBudgets) -> float:
    """The lowest dev accuracy point ``name`` may have on ``curve``: the best accuracy minus the
    accurate budget, or accurate's accuracy minus the balanced / fast budget."""
    if not curve:
        raise ValueError("an empty curve has no operating points")
    if name == "accurate":
        return max(p.accuracy for p in curve) - budgets.accurate
    accurate = _fastest([p for p in curve if p.accuracy >= budget_floor("accurate", curve, budgets)])
    return accurate.accuracy - getattr(budgets, name)


def name_points(curve: Sequence[CurvePoint], budgets: PointBudgets) -> dict[str, CurvePoint]:
    """The naming rule of the module docstring: name -> the fastest curve point above its floor."""
    return {name: _fastest([p for p in curve if p.accuracy >= budget_floor(name, curve, budgets)]) for name in NAMES}


def name_points_paired(
    curve: Sequence[CurvePoint],
    predictions: Mapping[float, np.ndarray],
    labels: np.ndarray,
    budgets: PointBudgets,
    confidence: float,
) -> dict[str, CurvePoint]:
    """The paired naming rule of the module docstring (``predictions``: factor -> (N,) dev
    predictions of that curve point, ``labels`` (N,))."""
    accurate = name_points(curve, budgets)["accurate"]
    above = [p for p in curve if p.factor >= accurate.factor]
    walk = [
        Candidate(
            "points",
            0,
            p.accuracy,
            p.flops_speedup,
            factor=p.factor,
            paired=compare(predictions[accurate.factor], predictions[p.factor], labels),
        )
        for p in above
    ]
    named = {"accurate": accurate}
    for name in ("balanced", "fast"):
        passed = {c.factor for c in certified(walk, confidence, getattr(budgets, name))}
        named[name] = _fastest([p for p in above if p.factor in passed] or [accurate])
    return named


@dataclass(frozen=True)
class OperatingPoints:
    """The curve measured on dev and the factors of the named points (all on the curve)."""

    curve: tuple[CurvePoint, ...]  # by factor ascending
    named: Mapping[str, float]  # name -> factor
    budgets: PointBudgets = field(default_factory=PointBudgets)
    data: str = ""  # what they were measured on, e.g. "rotten_tomatoes dev (600 examples)"
    confidence: float | None = None  # balanced and fast named by the paired bound at it; None: by dev accuracy

    @classmethod
    def from_curve(cls, curve: Sequence[CurvePoint], budgets: PointBudgets, data: str = "") -> OperatingPoints:
        named = {name: p.factor for name, p in name_points(curve, budgets).items()}
        return cls(tuple(sorted(curve, key=lambda p: p.factor)), named, budgets, data)

    # ------------------------------------------------------------------ stored form
    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "budgets": asdict(self.budgets),
            "named": dict(self.named),
            "curve": [asdict(p) for p in self.curve],
            "confidence": self.confidence,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> OperatingPoints:
        curve = tuple(CurvePoint(**p) for p in raw["curve"])
        named = {str(k): float(v) for k, v in raw["named"].items()}
        factors = {p.factor for p in curve}
        if not set(named.values()) <= factors:
            raise ValueError(f"operating points {named} are not all on the stored curve")
        confidence = raw.get("confidence")
        return cls(
            curve,
            named,
            PointBudgets(**raw.get("budgets", {})),
            str(raw.get("data", "")),
            None if confidence is None else float(confidence),
        )

    def rescaled(self, factor: float) -> OperatingPoints:
        """The same points for a model whose etas were multiplied by ``factor``: same thresholds,
        so same dev figures, at factors divided by ``factor``."""
        curve = tuple(CurvePoint(p.factor / factor, p.accuracy, p.flops_speedup, p.examples_per_s) for p in self.curve)
        named = {name: f / factor for name, f in self.named.items()}
        return OperatingPoints(curve, named, self.budgets, self.data, self.confidence)

    # ------------------------------------------------------------------ lookups
    def _on_curve(self, factor: float) -> CurvePoint | None:
        return next((p for p in self.curve if p.factor == factor), None)

    def at_factor(self, factor: float, name: str | None = None) -> OperatingPoint:
        """``factor`` as a point: named after a stored point at that factor (else ``factor=<f>``),
        with the curve's dev figures where the curve holds that factor."""
        if name is None:
            name = next((n for n, f in self.named.items() if f == factor), f"factor={factor:g}")
        on_curve = self._on_curve(factor)
        if on_curve is None:
            return OperatingPoint(name, factor)
        return OperatingPoint(name, factor, on_curve.accuracy, on_curve.flops_speedup)

    def point(self, name: str) -> OperatingPoint:
        if name == DEFAULT:
            return self.at_factor(1.0, DEFAULT)
        if name not in self.named:
            raise OperatingPointError(f"unknown operating point {name!r}; {self.listing()}")
        return self.at_factor(self.named[name], name)

    def for_speedup(self, target: float) -> OperatingPoint:
        """The curve point with the smallest dev speedup >= ``target`` (ties: the more accurate)."""
        above = [p for p in self.curve if p.flops_speedup >= target]
        if not above:
            top = _fastest(self.curve)
            raise OperatingPointError(
                f"target_speedup {target:g} is beyond the stored curve (at most {top.flops_speedup:.2f}x); "
                f"{self.listing()}"
            )
        chosen = min(above, key=lambda p: (p.flops_speedup, -p.accuracy, p.factor))
        return self.at_factor(chosen.factor)

    def fastest_within(self, max_drop: float) -> OperatingPoint:
        """The fastest curve point whose dev accuracy is within ``max_drop`` of ``accurate``'s."""
        floor = self.point("accurate").dev_accuracy - max_drop
        return self.at_factor(_fastest([p for p in self.curve if p.accuracy >= floor]).factor)

    def describe(self) -> str:
        """'accurate (factor 1, dev accuracy 0.8090, 2.00x), balanced (...), fast (...)'."""
        return ", ".join(self.point(name).describe() for name in self.named)

    def listing(self) -> str:
        """The stored points, for messages: 'stored points: accurate (...), ...; or default, ...'."""
        return f"stored points: {self.describe()}; or {DEFAULT} (the model as saved), a target_speedup, a factor > 0"


NO_POINTS = (
    "this model has no stored operating points (add them with `adapler calibrate --points`); "
    "a factor > 0 works without them"
)


def _positive(value: Any, what: str, points: OperatingPoints | None = None) -> float:
    """``value`` as a float if it is a finite number > 0, else OperatingPointError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        listing = f"; {points.listing()}" if points else ""
        raise OperatingPointError(f"{what} must be a finite number > 0, got {value!r}{listing}")
    return float(value)


def resolve(
    points: OperatingPoints | None,
    operating_point: str | None = None,
    target_speedup: float | None = None,
    factor: float | None = None,
) -> OperatingPoint:
    """The point a request asks for: at most one of a stored name (or ``default``), a target
    speedup (the nearest curve point at or above it) or a factor; none = ``default``."""
    if sum(value is not None for value in (operating_point, target_speedup, factor)) > 1:
        raise OperatingPointError("give at most one of operating_point, target_speedup and factor")
    if factor is not None:
        factor = _positive(factor, "factor")
        return points.at_factor(factor) if points else OperatingPoint(f"factor={factor:g}", factor)
    if target_speedup is None and operating_point in (None, DEFAULT):
        return points.point(DEFAULT) if points else OperatingPoint(DEFAULT, 1.0)
    if points is None:
        raise OperatingPointError(NO_POINTS)
    if operating_point is not None:
        return points.point(operating_point)
    return points.for_speedup(_positive(target_speedup, "target_speedup", points))


def read_adapler_config(directory: str | Path) -> tuple[AdapLeRSettings, OperatingPoints | None]:
    """The ``adapler`` section of a model directory's config.json: the settings and, when stored,
    the operating points (the one reader of that section: torch and ONNX Runtime models alike)."""
    stored = dict(json.loads((Path(directory) / "config.json").read_text()).get("adapler", {}))
    points = stored.pop("operating_points", None)
    return AdapLeRSettings(**stored), (OperatingPoints.from_dict(points) if points else None)


def read_operating_points(directory: str | Path) -> OperatingPoints | None:
    """The points stored in a model directory (None if it has none)."""
    return read_adapler_config(directory)[1]
