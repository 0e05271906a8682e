"""Paired statistics of what pruning changes: the evidence behind every accuracy promise.

Pruning's cost is measured on the same examples against the same reference (stage 1, or the
same weights with removal off): per example, did the prediction change, and was it right
before? With n labelled examples, b newly wrong and c newly right, the observed accuracy drop is
(b - c) / n. Its noise comes from the b + c changed predictions only, far less than the marginal
noise of two accuracies.

The one-sided upper confidence bound (:func:`drop_upper_bound`) is the exact binomial one on the
disagreements: conditional on the d = b + c predictions that turned, b is binomial with p =
P(newly wrong | turned), and drop = pi * (2p - 1) with pi the turning rate. Clopper-Pearson bounds
p from above (p_u, 1 when nothing turned); pi is plugged in at its estimate (not bounded: its
noise multiplies 2p - 1, which is near 0 exactly where the bound decides), d / n from the labels,
or, where label-free texts are given, the rate of any changed prediction over every text (>= pi,
since a wrong label can also turn into another wrong one). A prediction that does not change
cannot lose accuracy, so the drop is also at most the disagreement rate: its own Clopper-Pearson
bound (on every text counted) caps the result, which binds only where hardly anything changes.
The bootstrap the issue used resamples the same counts without the conditioning and was the more
optimistic of the two on the benchmark (bench/selection_trust.py).

:func:`smallest_certifiable_drop` is the bound this split gives a point that changes its observed
share of predictions and loses nothing on balance, and :func:`rows_needed` how many examples
would bring it under a tolerance.

Numpy and ``math`` only (scipy is no dependency): the beta quantiles come from :func:`_beta_ppf`,
bisection on the regularized incomplete beta (a continued fraction); the counts are integers, so
the Clopper-Pearson bounds are cached.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """A candidate's predictions against a reference's on the same labelled examples."""

    examples: int  # n
    newly_wrong: int  # b: right under the reference, wrong under the candidate
    newly_right: int  # c: wrong under the reference, right under the candidate
    changed: int  # predictions that differ at all (>= b + c: a wrong label can turn into another wrong one)
    reference_errors: int

    @property
    def drop(self) -> float:
        """Observed accuracy drop (b - c) / n, as a fraction (0.01 = one point)."""
        return (self.newly_wrong - self.newly_right) / self.examples if self.examples else 0.0

    @property
    def candidate_errors(self) -> int:
        return self.reference_errors + self.newly_wrong - self.newly_right

    @property
    def error_ratio(self) -> float:
        """Candidate error rate / reference error rate (1 when both are 0, inf when only the
        reference is perfect): near the ceiling a small drop can be many times the errors."""
        if self.reference_errors == 0:
            return 1.0 if self.candidate_errors == 0 else math.inf
        return self.candidate_errors / self.reference_errors

    @property
    def reference_error_rate(self) -> float:
        return self.reference_errors / self.examples if self.examples else 0.0


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> PairedComparison:
    """Per-example comparison of two prediction vectors (N,) against the labels (N,)."""
    reference, candidate, labels = (np.asarray(a) for a in (reference, candidate, labels))
    if not reference.shape == candidate.shape == labels.shape:
        raise ValueError(f"paired predictions need one shape, got {reference.shape}, {candidate.shape}, {labels.shape}")
    was_right, is_right = reference == labels, candidate == labels
    return PairedComparison(
        examples=len(labels),
        newly_wrong=int(np.sum(was_right & ~is_right)),
        newly_right=int(np.sum(~was_right & is_right)),
        changed=int(np.sum(reference != candidate)),
        reference_errors=int(np.sum(~was_right)),
    )


@dataclass(frozen=True)
class LabelFree:
    """Changed predictions counted on texts without labels (an unlabelled file, or any texts)."""

    changed: int
    texts: int

    @property
    def rate(self) -> float:
        return self.changed / self.texts if self.texts else 0.0


def changes(reference: np.ndarray, candidate: np.ndarray) -> LabelFree:
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"paired predictions need one shape, got {reference.shape} and {candidate.shape}")
    return LabelFree(int(np.sum(reference != candidate)), len(reference))


def drop_upper_bound(comparison: PairedComparison, confidence: float, label_free: LabelFree | None = None) -> float:
    """One-sided upper ``confidence`` bound of the accuracy drop (fraction); see the module
    docstring. ``label_free``: changed predictions counted on more texts, pooled with the
    labelled examples' changes for the turning rate and for the disagreement cap."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1 - confidence
    b, c, n = comparison.newly_wrong, comparison.newly_right, comparison.examples
    if n == 0:
        return 1.0
    changed = comparison.changed + (label_free.changed if label_free else 0)
    texts = n + (label_free.texts if label_free else 0)
    turned_rate = (b + c) / n if label_free is None else changed / texts  # >= the rate that turns right or wrong
    conditional = turned_rate * (2 * clopper_pearson_upper(b, b + c, alpha) - 1)
    return min(conditional, clopper_pearson_upper(changed, texts, alpha))


def paired_summary(comparison: PairedComparison, confidence: float) -> dict[str, float]:
    """The comparison's figures as one flat record (fractions; what `adapler evaluate --against`
    prints and a run's records carry)."""
    return {
        "examples": comparison.examples,
        "changed": comparison.changed,
        "newly_wrong": comparison.newly_wrong,
        "newly_right": comparison.newly_right,
        "drop": comparison.drop,
        "drop_bound": drop_upper_bound(comparison, confidence),
        "confidence": confidence,
        "error_ratio": comparison.error_ratio,
        "smallest_certifiable_drop": smallest_certifiable_drop(
            comparison.examples, comparison.changed / max(comparison.examples, 1), confidence
        ),
    }


def smallest_certifiable_drop(
    examples: int, changed_rate: float, confidence: float, label_free: LabelFree | None = None
) -> float:
    """The bound a point would get on ``examples`` labelled examples if it changed this share of
    predictions and lost nothing on balance (b = c): the least drop this split can certify."""
    turned = round(changed_rate * examples)
    balanced = PairedComparison(examples, (turned + 1) // 2, turned // 2, turned, 0)
    return drop_upper_bound(balanced, confidence, label_free)


def rows_needed(tolerance: float, changed_rate: float, confidence: float, limit: int = 10_000_000) -> int | None:
    """Labelled examples a balanced point (b = c) changing ``changed_rate`` of its predictions
    needs for its bound to fall within ``tolerance``; None beyond ``limit``."""
    low, high = 1, 64
    while smallest_certifiable_drop(high, changed_rate, confidence) > tolerance:
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > max(1, low // 50):  # two per cent is precise enough for advice
        middle = (low + high) // 2
        if smallest_certifiable_drop(middle, changed_rate, confidence) > tolerance:
            low = middle
        else:
            high = middle
    return high


@functools.lru_cache(maxsize=1 << 16)
def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """Exact one-sided upper (1 - alpha) bound of a binomial proportion (1 with no trial)."""
    if successes >= trials:
        return 1.0
    return _beta_ppf(1 - alpha, successes + 1, trials - successes)


@functools.lru_cache(maxsize=1 << 16)
def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """Exact one-sided lower (1 - alpha) bound of a binomial proportion (0 with no success)."""
    if successes <= 0:
        return 0.0
    return _beta_ppf(alpha, successes, trials - successes + 1)


def _beta_ppf(q: float, a: float, b: float) -> float:
    """The q-quantile of Beta(a, b), by bisection on :func:`_beta_cdf` (to 1e-10)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if _beta_cdf(middle, a, b) < q:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _beta_cdf(x: float, a: float, b: float) -> float:
    """Regularized incomplete beta I_x(a, b) (Numerical Recipes' continued fraction)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1 - front * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= d * c
        if abs(d * c - 1) < 1e-12:
            break
    return result
