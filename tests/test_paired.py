"""Paired statistics (adapler/paired.py) on hand-made predictions."""

import math

import numpy as np
import pytest

from adapler.paired import (
    LabelFree,
    PairedComparison,
    changes,
    clopper_pearson_lower,
    clopper_pearson_upper,
    compare,
    drop_upper_bound,
    rows_needed,
    smallest_certifiable_drop,
)


def predictions(n: int, newly_wrong: int, newly_right: int, reference_errors: int):
    """labels, reference and candidate predictions (binary) with these paired counts."""
    labels = np.zeros(n, dtype=int)
    reference = np.zeros(n, dtype=int)
    reference[:reference_errors] = 1  # wrong
    candidate = reference.copy()
    candidate[:newly_right] = 0  # was wrong, now right
    candidate[reference_errors : reference_errors + newly_wrong] = 1  # was right, now wrong
    return labels, reference, candidate


def test_compare_counts_the_turned_predictions():
    labels, reference, candidate = predictions(100, newly_wrong=5, newly_right=2, reference_errors=10)
    paired = compare(reference, candidate, labels)
    assert (paired.newly_wrong, paired.newly_right, paired.changed, paired.reference_errors) == (5, 2, 7, 10)
    assert paired.drop == pytest.approx(0.03)
    assert paired.error_ratio == pytest.approx(13 / 10)


def test_marginal_accuracies_tie_but_the_bound_rejects():
    # 200 dev examples, both at 80%: 10 newly wrong, 10 newly right. The marginal rule sees no drop;
    # a tenth of the predictions turned, and a split of 10/10 is compatible with a 3-point loss.
    labels, reference, candidate = predictions(200, newly_wrong=10, newly_right=10, reference_errors=40)
    paired = compare(reference, candidate, labels)
    assert np.mean(reference == labels) == np.mean(candidate == labels)
    assert drop_upper_bound(paired, 0.9) > 0.02


def test_a_visible_drop_that_the_pairing_certifies():
    # 2,000 dev examples, 4 newly wrong, none newly right: 0.2 points down. Two unpaired accuracies
    # of 0.80 on 2,000 examples differ by about 1.6 points at 90% by chance alone; paired, only 4
    # predictions turned and the bound stays under 1 point.
    labels, reference, candidate = predictions(2000, newly_wrong=4, newly_right=0, reference_errors=400)
    paired = compare(reference, candidate, labels)
    unpaired = 1.2816 * math.sqrt(2 * 0.8 * 0.2 / 2000)
    assert unpaired > 0.01
    assert paired.drop == pytest.approx(0.002) and drop_upper_bound(paired, 0.9) < 0.01


def test_the_bound_grows_with_confidence_and_shrinks_with_label_free_texts():
    paired = PairedComparison(300, 9, 3, 12, 45)
    assert drop_upper_bound(paired, 0.8) < drop_upper_bound(paired, 0.9) < drop_upper_bound(paired, 0.99)
    # Nothing changed on 20,000 unlabelled texts: the turning rate is tiny, and so is the bound.
    assert drop_upper_bound(paired, 0.9, LabelFree(0, 20_000)) < 0.002 < drop_upper_bound(paired, 0.9)


def test_changes_count_differing_predictions_on_any_text():
    assert changes(np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1])) == LabelFree(2, 4)
    with pytest.raises(ValueError, match="one shape"):
        changes(np.zeros(3), np.zeros(4))


def test_clopper_pearson_matches_known_values():
    assert clopper_pearson_upper(0, 200, 0.05) == pytest.approx(1 - 0.05 ** (1 / 200), abs=1e-9)
    assert clopper_pearson_upper(3, 20, 0.05) == pytest.approx(0.34366, abs=1e-4)  # scipy beta.ppf(0.95, 4, 17)
    assert clopper_pearson_lower(3, 20, 0.05) == pytest.approx(0.04217, abs=1e-4)


def test_smallest_certifiable_drop_and_rows_needed_agree():
    assert smallest_certifiable_drop(300, 0.1, 0.9) > 0.01  # 10% churn on 300 examples: 1 point out of reach
    needed = rows_needed(0.01, 0.1, 0.9)
    assert smallest_certifiable_drop(needed, 0.1, 0.9) <= 0.01 < smallest_certifiable_drop(needed // 2, 0.1, 0.9)
