"""The benchmarks stay runnable after the code moves: every name a bench script imports from the
project (at module level or inside a function, where a run would only fail minutes in) exists."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
PROJECT = ("adapler", "adapler_pipelines", "adapler_deploy", "adapler_cli")


def project_imports(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) of each ``from <project module> import name`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PROJECT:
            found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


@pytest.mark.parametrize("script", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_every_project_name_a_benchmark_imports_exists(script):
    missing = [
        f"{script.name}:{line}: {module}.{name}"
        for module, name, line in project_imports(script)
        if not hasattr(importlib.import_module(module), name)
    ]
    assert not missing, missing


def _selection_trust():
    import sys

    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module("selection_trust")
    finally:
        sys.path.remove(str(BENCH))


def test_every_frontier_rule_passes_over_a_fast_point_that_loses_and_takes_one_that_changes_nothing():
    """The speed-against-risk benchmark on a hand-made cache: on one curve the fastest point turns
    60 of 400 right predictions wrong; on the other a faster-than-the-first point changes
    nothing. Every rule family, at every confidence, takes the harmless point; the marginal rule
    would too (it only sees accuracy), so this checks the families' wiring, not their power."""
    from types import SimpleNamespace

    bench = _selection_trust()
    n = 400
    labels = np.zeros(n, dtype=int)
    stage1 = labels.copy()
    lossy = labels.copy()
    lossy[:60] = 1
    points = [("a", 0, 1.0), ("a", 0, 2.0), ("b", 0, 1.0), ("b", 0, 1.5)]
    pred = {points[0]: stage1, points[1]: lossy, points[2]: stage1, points[3]: stage1}
    flops = {points[0]: 0.8, points[1]: 0.25, points[2]: 0.7, points[3]: 0.5}
    cache = SimpleNamespace(
        points=points,
        labels=labels,
        stage1=stage1,
        pred=pred,
        flops={p: np.full(n, f) for p, f in flops.items()},
        unpruned={("a", 0): stage1, ("b", 0): stage1},
        backbone_flops=np.ones(n),
    )
    chosen = bench.frontier_rules(cache, np.arange(n))
    assert {rule for rule, _ in chosen} == {
        "paired",
        "curves_no_correction",
        "curves_bonferroni",
        "exact_no_correction",
    }
    assert set(chosen.values()) == {("b", 0, 1.5)}, chosen
    speedup, drop = bench.on_test(cache, np.arange(n), ("a", 0, 2.0))
    assert speedup == pytest.approx(4.0) and drop == pytest.approx(0.15)


def test_interleaved_times_each_turn_after_an_untimed_pass_of_the_same_engine():
    """bench/harness.py: the engines take turns; in each turn the engine runs once untimed (its
    caches and thread pool warm, the engine before it at rest), then once timed; the median of the
    timed passes is kept."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(BENCH))
    try:
        harness = importlib.import_module("harness")
    finally:
        sys.path.remove(str(BENCH))
    calls = []

    def engine(name, seconds):
        def run(batches):
            calls.append(name)
            return SimpleNamespace(seconds=seconds[len([c for c in calls if c == name]) - 1], name=name)

        return run

    timed = harness.interleaved(
        {"a": engine("a", [9, 1, 9, 3, 9, 2]), "b": engine("b", [9, 5, 9, 4, 9, 6])}, ["batch"], repeats=3
    )
    assert calls == ["a", "a", "b", "b"] * 3
    assert timed["a"][0] == 2 and timed["b"][0] == 5  # the medians of the timed (second) passes only
    assert timed["a"][1].seconds == 2 and timed["b"][1].seconds == 6  # the last timed pass
