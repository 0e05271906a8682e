"""The selection rules (adapler/selection.py) on hand-made tables."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from adapler.selection import (
    Candidate,
    accuracy_floor,
    best_epochs,
    certificate,
    early_stopping_score,
    paired_bound,
    pareto_front,
    select,
)


def table(*rows: tuple[float, float], trial: str = "t") -> list[Candidate]:
    return [Candidate(trial, epoch, accuracy, speedup) for epoch, (accuracy, speedup) in enumerate(rows)]


def test_select_highest_speedup_among_eligible():
    points = table((0.90, 1.5), (0.85, 3.0), (0.895, 2.0), (0.91, 1.2))  # the second: fastest, too inaccurate
    assert select(points, reference=0.90, tolerance=0.01).chosen.epoch == 2
    assert select(points, reference=0.86, tolerance=0.01).chosen.epoch == 1
    assert select(points, reference=0.905, tolerance=0.0).chosen.epoch == 3
    assert select(points, reference=0.90, tolerance=0.01).eligible


def test_select_falls_back_to_the_most_accurate():
    selection = select(table((0.70, 4.0), (0.80, 2.0), (0.75, 3.0)), reference=0.95, tolerance=0.01)
    assert selection.chosen.epoch == 1
    assert not selection.eligible


def test_select_breaks_speedup_ties_by_accuracy_then_order():
    assert select(table((0.89, 2.0), (0.92, 2.0), (0.90, 2.0)), reference=0.90, tolerance=0.02).chosen.epoch == 1
    assert select(table((0.92, 2.0), (0.92, 2.0)), reference=0.90, tolerance=0.02).chosen.epoch == 0


def test_select_over_trials_keeps_params_and_model_dir():
    a = Candidate("a", 0, 0.80, 1.9, {"stage2.phi": 0.01}, "/ckpt/a0")
    b = Candidate("b", 1, 0.81, 2.4, {"stage2.phi": 0.02}, "/ckpt/b1")
    c = Candidate("c", 0, 0.70, 5.0, {"stage2.phi": 0.05}, "/ckpt/c0")
    selection = select([a, b, c], reference=0.815, tolerance=0.01)
    assert selection.chosen is b
    assert selection.chosen.params == {"stage2.phi": 0.02} and selection.chosen.model_dir == "/ckpt/b1"
    assert selection.front == [b, c]  # a is beaten by b on both


def test_select_needs_a_candidate():
    with pytest.raises(ValueError, match="no candidate"):
        select([], reference=0.9, tolerance=0.01)


def test_pareto_front_keeps_ties_and_sorts_by_speedup():
    points = table((0.9, 1.0), (0.8, 2.0), (0.8, 2.0), (0.7, 1.5), (0.95, 0.9))
    front = pareto_front(points)
    assert [p.epoch for p in front] == [4, 0, 1, 2]


def test_early_stopping_score_ranks_like_select():
    reference, tolerance = 0.90, 0.01
    assert early_stopping_score(0.895, 2.0, reference, tolerance) == 2.0
    assert early_stopping_score(0.88, 3.0, reference, tolerance) == pytest.approx(-0.01)
    assert early_stopping_score(0.85, 3.0, reference, tolerance) < early_stopping_score(0.88, 1.0, reference, tolerance)
    points = table((0.895, 2.0), (0.85, 3.0), (0.91, 1.2))
    best = max(points, key=lambda p: early_stopping_score(p.dev_accuracy, p.dev_flops_speedup, reference, tolerance))
    assert best is select(points, reference, tolerance).chosen


def test_best_epochs_by_accuracy_earlier_first_on_ties():
    history = [{"dev_accuracy": a} for a in (0.7, 0.8, 0.8, 0.75)]
    assert best_epochs(history, 3) == [1, 2, 3]
    assert best_epochs(history, 1) == [1]
    assert best_epochs(history, 10) == [1, 2, 3, 0]


def test_no_pruning_warning_below_the_floor_only():
    from adapler.selection import NO_PRUNING_FLOOR, no_pruning_warning

    assert no_pruning_warning(NO_PRUNING_FLOOR, "try X") == ""
    assert no_pruning_warning(2.0, "try X") == ""
    warning = no_pruning_warning(0.99, "try `adapler tune ...`")
    assert "0.99x" in warning and "removes almost no tokens" in warning and warning.endswith("try `adapler tune ...`")
    assert "\n" not in warning


def test_tolerance_warning_only_when_no_candidate_stayed_within_it():
    """A full-data Rotten Tomatoes run: stage 1 read 0.805 on dev; every trial
    lost 2-10 points, so the rule took the most accurate one."""
    from adapler.selection import tolerance_warning

    lost = [Candidate("a", 0, 0.7765, 2.90, unpruned_accuracy=0.778), Candidate("b", 0, 0.7220, 4.39)]
    selection = select(lost, reference=0.805, tolerance=0.01)
    assert not selection.eligible and selection.chosen is lost[0]
    warning = tolerance_warning(selection, 0.805, 0.01, "try `adapler tune ...`")
    assert "within 1 point(s)" in warning and "0.8050" in warning and "0.7765" in warning and "2.90x" in warning
    assert warning.endswith("try `adapler tune ...`") and "\n" not in warning
    kept = select([*lost, Candidate("c", 0, 0.80, 1.9)], reference=0.805, tolerance=0.01)
    assert kept.eligible and tolerance_warning(kept, 0.805, 0.01, "try X") == ""


def test_select_over_trial_epoch_and_factor_points():
    """Calibration in the loop: a model scaled by a factor is one more candidate. Stage 1 read 0.80,
    tolerance 0.01: the floor is 0.79."""
    trained = [
        Candidate("a", 0, 0.82, 1.8, {"stage2.phi": 0.01}, "/a0"),
        Candidate("a", 1, 0.78, 2.6, {"stage2.phi": 0.01}, "/a1"),  # fastest trained epoch, under the floor
        Candidate("b", 0, 0.80, 2.0, {"stage2.phi": 0.02}, "/b0"),  # the rule's pick among trained points
    ]
    scaled = [
        Candidate("a", 0, 0.81, 2.3, {"stage2.phi": 0.01}, "/a0", factor=1.5),
        Candidate("a", 0, 0.795, 2.9, {"stage2.phi": 0.01}, "/a0", factor=2.0),  # the documented pick
        Candidate("a", 0, 0.74, 3.5, {"stage2.phi": 0.01}, "/a0", factor=3.0),
        Candidate("b", 0, 0.80, 2.0, {"stage2.phi": 0.02}, "/b0", factor=0.9),  # ties b0: order decides
    ]
    assert select(trained, reference=0.80, tolerance=0.01).chosen.model_dir == "/b0"
    selection = select(trained + scaled, reference=0.80, tolerance=0.01)
    assert (selection.chosen.trial, selection.chosen.epoch, selection.chosen.factor) == ("a", 0, 2.0)
    assert selection.chosen.model_dir == "/a0" and selection.eligible
    # the scaled a0 beats trained a1 and b0 on both axes: they leave the front
    assert [(c.trial, c.epoch, c.factor) for c in selection.front] == [
        ("a", 0, 1.0),
        ("a", 0, 1.5),
        ("a", 0, 2.0),
        ("a", 0, 3.0),
    ]


def test_pruning_may_cost_at_most_the_tolerance_of_the_models_own_unpruned_accuracy():
    """Stage 1 read 0.67; stage 2 trained its classifier on to 0.70 unpruned. Within a point of
    stage 1 is not enough: 0.665 at 2.9x costs 3.5 points of what the same weights read unpruned."""
    points = [
        Candidate("short", 0, 0.665, 2.9, unpruned_accuracy=0.70),
        Candidate("short", 0, 0.692, 1.6, unpruned_accuracy=0.70, factor=0.5),
        Candidate("long", 0, 0.675, 2.2),  # unpruned not measured: the reference alone
    ]
    assert accuracy_floor(points[0], reference=0.67, tolerance=0.01) == pytest.approx(0.69)
    assert accuracy_floor(points[2], reference=0.67, tolerance=0.01) == pytest.approx(0.66)
    assert select(points, reference=0.67, tolerance=0.01).chosen is points[2]
    assert select(points[:2], reference=0.67, tolerance=0.01).chosen is points[1]
    # an unpruned accuracy under the reference does not lower the floor
    assert accuracy_floor(Candidate("x", 0, 0.6, 2.0, unpruned_accuracy=0.5), 0.67, 0.01) == pytest.approx(0.66)


def test_run_warnings_name_what_to_try_next_for_train_and_for_the_search():
    """What `adapler train` and `adapler run` warn with, each ending with a command to run next
    (these sentences replace whole-pipeline runs that only checked them)."""
    from adapler.config import Stage2Config
    from adapler.selection import run_warnings

    stage2 = Stage2Config(epochs=3, eta_lr=0.01, phi=0.2, selection_tolerance=0.01)
    noop = select([Candidate("stage2", 0, 0.70, 0.98)], reference=0.70, tolerance=0.01)
    train = run_warnings(noop, 0.70, "adapler train --config runs/x/config.json", stage2)
    assert "removes almost no tokens" in train.no_pruning and not train.accuracy_lost
    assert train.no_pruning.endswith(
        "try `adapler train --config runs/x/config.json --set stage2.epochs=5 "
        "--set stage2.eta_lr=0.04 --set stage2.phi=1`"
    )
    assert train.text == train.no_pruning
    search = SimpleNamespace(phi_min=0.1, phi_max=2.0)
    tune = run_warnings(noop, 0.70, "adapler tune --config runs/x/config.json", stage2, search)
    assert tune.no_pruning.endswith("--set stage2.eta_lr=0.04 --set tune.phi_max=10`")

    lossy = select([Candidate("stage2", 0, 0.60, 3.0)], reference=0.70, tolerance=0.01)
    train = run_warnings(lossy, 0.70, "adapler train --config c.json", stage2)
    assert not train.no_pruning and "no model stage 2 trained stayed within" in train.accuracy_lost
    assert train.accuracy_lost.endswith(
        "try `adapler train --config c.json --set stage2.init=finetuned --set stage2.phi=0.1`"
    )
    tune = run_warnings(lossy, 0.70, "adapler tune --config c.json", stage2, SimpleNamespace(phi_min=0.3, phi_max=2.0))
    assert tune.accuracy_lost.endswith(
        "try `adapler tune --config c.json --set tune.inits=[finetuned] "
        "--set tune.phi_min=0.1 --set tune.phi_max=0.5 --set stage2.phi=0.22`"
    )
    both = run_warnings(select([Candidate("s", 0, 0.6, 1.0)], 0.7, 0.01), 0.7, "adapler train", stage2)
    assert both.text == f"{both.no_pruning} {both.accuracy_lost}" and "\n" not in both.text


def test_champion_verdict_policy_warning_split_and_figures():
    from adapler.selection import TEST_SPLIT_TAG, champion_verdict

    new = {TEST_SPLIT_TAG: "a", "test_accuracy": "0.9", "flops_speedup": "2.0"}
    assert champion_verdict("always", "a warning", new, None) == (True, "mlflow.promote=always")
    assert champion_verdict("never", "", new, None) == (False, "mlflow.promote=never")
    promoted, reason = champion_verdict("better", "removed no token", new, None, name="m")
    assert not promoted and "warning" in reason
    assert champion_verdict("better", "", new, None, name="m") == (True, "m had no champion yet")
    promoted, reason = champion_verdict("better", "", new, {**new, TEST_SPLIT_TAG: "b"}, "1")
    assert not promoted and "same test split" in reason
    promoted, reason = champion_verdict("better", "", new, {**new, "test_accuracy": "0.85"}, "1")
    assert promoted and reason.startswith("at least as accurate and as fast: test accuracy 0.9000 vs 0.8500")
    promoted, reason = champion_verdict("better", "", new, {**new, "flops_speedup": "3"}, "1")
    assert not promoted and reason.startswith("slower:")


def paired_point(
    trial: str, epoch: int, factor: float, speedup: float, b: int, c: int, n: int = 2000, **kw
) -> Candidate:
    from adapler.paired import PairedComparison

    return Candidate(
        trial,
        epoch,
        0.8 - (b - c) / n,
        speedup,
        factor=factor,
        paired=PairedComparison(n, b, c, b + c, int(0.2 * n)),
        **kw,
    )


def test_paired_rule_walks_one_sequence_by_changed_predictions_and_stops_at_its_first_failure():
    """The documented point: the walk orders every point by the predictions it changes against
    stage 1 (a 1.0: 3, a 1.4: 8, b 1.0: 32, b 1.4: 40) and stops at b 1.0 (30 newly wrong of
    2,000), so b 1.4 is out even though its 20 newly wrong and 20 newly right would certify
    alone. The fastest certified point is a at 1.4; the marginal rule would take b 1.4 (no
    accuracy drop at 4.0x)."""
    table = [
        paired_point("a", 0, 1.0, 2.0, b=2, c=1),
        paired_point("a", 0, 1.4, 2.5, b=6, c=2),
        paired_point("b", 0, 1.0, 3.0, b=30, c=2),
        paired_point("b", 0, 1.4, 4.0, b=20, c=20),
    ]
    selection = select(table, reference=0.8, tolerance=0.01, confidence=0.9)
    assert selection.eligible and selection.chosen is table[1]
    assert selection.confidence == 0.9  # fixed-sequence testing: no correction for the choice
    assert select(table[3:], reference=0.8, tolerance=0.01, confidence=0.9).eligible  # certifies alone
    marginal = select([replace(c, paired=None) for c in table], reference=0.8, tolerance=0.01)
    assert (marginal.chosen.trial, marginal.chosen.factor) == ("b", 1.4)


def test_a_wide_search_costs_the_bound_nothing():
    """Nine more trials in the search leave a point's certificate as it was: 100 newly wrong and
    100 newly right of 2,000 has a 90% bound of 0.95 points, certified beside any number of
    gentler points (a Bonferroni correction over ten curves, at 99%, would refuse it)."""
    gentle = [paired_point(f"t{i}", 0, 1.0, 1.5, b=1, c=1) for i in range(9)]
    wide = paired_point("x", 0, 1.0, 3.0, b=100, c=100)
    for table in ([wide], [*gentle, wide]):
        selection = select(table, reference=0.8, tolerance=0.01, confidence=0.9)
        assert selection.eligible and selection.chosen is wide
    assert paired_bound(wide, 0.99) > 0.01


def test_the_own_unpruned_accuracy_is_a_guard_on_the_observed_drop_not_a_second_bound():
    """Stage 2 reads far over an under-trained stage 1, so every pruned point is certified against
    stage 1. Against their own unpruned weights the 2.5x point gave back 2 points (the guard
    refuses it) and the 3.0x point 0.75 (7 predictions changed of 400: its 90% bound, 1.5 points,
    is what a second bound would have refused). The walk goes on past a point the guard refuses."""
    from adapler.paired import PairedComparison

    def own(b, c, n=400):
        return PairedComparison(n, b, c, b + c, int(0.16 * n))

    table = [
        paired_point("a", 0, 1.0, 1.5, b=20, c=180, n=400, unpruned_paired=own(b=4, c=2)),
        paired_point("a", 0, 1.4, 2.5, b=28, c=180, n=400, unpruned_paired=own(b=10, c=2)),
        paired_point("a", 0, 2.0, 3.0, b=22, c=180, n=400, unpruned_paired=own(b=5, c=2)),
    ]
    selection = select(table, reference=0.8, tolerance=0.01, confidence=0.9)
    assert selection.eligible and selection.chosen is table[2]
    without_the_middle = select([table[0], table[1]], reference=0.8, tolerance=0.01, confidence=0.9)
    assert without_the_middle.chosen is table[0]
    cert = certificate(selection, 0.01)
    assert cert.unpruned_drop == pytest.approx(3 / 400) and cert.drop_bound <= 0.01
    # no candidate keeps the guard: none is eligible
    refused = [replace(c, unpruned_paired=own(b=12, c=2)) for c in table]
    assert not select(refused, reference=0.8, tolerance=0.01).eligible


def test_paired_rule_without_a_certified_point_takes_the_smallest_bound():
    table = [paired_point("a", 0, 1.0, 2.0, b=30, c=10, n=300), paired_point("a", 1, 1.0, 2.5, b=8, c=6, n=300)]
    selection = select(table, reference=0.8, tolerance=0.01)
    assert not selection.eligible and selection.chosen is table[1]


def test_relative_tolerance_tightens_near_the_ceiling():
    from adapler.paired import PairedComparison
    from adapler.selection import effective_tolerance

    # 1% errors: 0.5 of it is half a point; 4 newly wrong of 2,000 (0.2 points, 1.2x the errors) is
    # within 1 point but not within half the error rate at 90%.
    point = Candidate("a", 0, 0.988, 2.0, paired=PairedComparison(2000, 4, 0, 4, 20))
    assert effective_tolerance(0.01, 0.5, 0.01) == pytest.approx(0.005)
    assert select([point], 0.99, 0.01).eligible
    assert not select([point], 0.99, 0.01, relative_tolerance=0.1).eligible


def test_label_free_texts_are_used_and_reported(tmp_path):
    from adapler.data import load_unlabeled
    from adapler.paired import changes
    from adapler.selection import certificate

    path = tmp_path / "unlabeled.csv"
    path.write_text("text\n" + "".join(f"text number {i}\n" for i in range(5000)))
    texts = load_unlabeled(path)
    assert len(texts) == 5000 and texts["text"].iloc[3] == "text number 3"
    reference = np.zeros(len(texts), dtype=int)
    pruned = reference.copy()
    pruned[:5] = 1  # 5 of 5,000 predictions change
    label_free = changes(reference, pruned)
    point = paired_point("a", 0, 1.0, 2.0, b=3, c=0, n=200)
    assert not select([point], 0.8, 0.01).eligible  # 200 dev examples alone: 3 of 3 turned wrong
    selection = select([replace(point, label_free=label_free)], 0.8, 0.01)
    assert selection.eligible
    cert = certificate(selection, 0.01)
    assert cert.disagreement_texts == 5200 and cert.disagreement_rate == pytest.approx(8 / 5200)
    assert cert.drop_bound < 0.01 and cert.dev_drop == pytest.approx(0.015)


def test_loose_bound_sentence_on_a_tiny_dev_split():
    from adapler.selection import certificate, loose_bound_warning, tolerance_warning

    tiny = select([paired_point("a", 0, 1.0, 2.0, b=3, c=3, n=60)], 0.8, 0.01)
    warning = loose_bound_warning(certificate(tiny, 0.01))
    assert (
        "60 dev examples" in warning
        and "data.unlabeled_file" in warning
        and "add about" in warning
        and " in all)" in warning
    )
    assert not tiny.eligible and tolerance_warning(tiny, 0.8, 0.01, "try x") == ""  # loose, not seen lost
    assert "loose" in warning
    big = select([paired_point("a", 0, 1.0, 2.0, b=2, c=1, n=5000)], 0.8, 0.01)
    assert loose_bound_warning(certificate(big, 0.01)) == ""
    # certified on a small split (every change went right): not "loose", but the split is still weak
    one_way = select([paired_point("a", 0, 1.0, 2.0, b=0, c=12, n=220)], 0.8, 0.01)
    assert one_way.eligible
    warning = loose_bound_warning(certificate(one_way, 0.01))
    assert "is certified" in warning and "loose" not in warning and "add about" in warning
