"""The load policy (deploy/adaptive.py) under a synthetic backlog, on a fake clock; its settings."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapler_deploy.adaptive import LoadPolicy
from adapler_deploy.schemas import ServeSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_policy_switches_under_a_backlog_and_back_after_the_cooldown():
    clock = FakeClock()
    policy = LoadPolicy(high_water=10, low_water=2, cooldown_s=1.0, clock=clock)
    assert [policy.update(b) for b in (0, 5, 9)] == [False, False, False]  # under the high mark
    assert policy.update(10) is True  # reached: overloaded at once
    assert policy.update(5) is True  # between the marks: stays (hysteresis)
    assert policy.update(2) is True  # calm, but not for cooldown_s yet
    clock.now += 0.5
    assert policy.update(1) is True
    clock.now += 0.25
    assert policy.update(7) is True  # the backlog came back: the calm period starts over
    clock.now += 0.5
    assert policy.update(2) is True
    clock.now += 0.75
    assert policy.update(0) is True  # 0.75 s of calm so far
    clock.now += 0.25
    assert policy.update(0) is False  # 1 s at or under low_water: back to the default
    assert policy.update(9) is False
    assert [(s.overloaded, s.backlog, s.at) for s in policy.switches] == [(True, 10, 100.0), (False, 0, 102.25)]


def test_zero_cooldown_switches_back_at_the_low_mark():
    policy = LoadPolicy(high_water=3, low_water=0, cooldown_s=0.0, clock=FakeClock())
    assert [policy.update(b) for b in (3, 1, 0, 2, 3)] == [True, True, False, False, True]
    assert len(policy.switches) == 3


@pytest.mark.parametrize("marks", [(2, 2), (1, 5), (3, -1)])
def test_water_marks_must_be_ordered(marks):
    high, low = marks
    with pytest.raises(ValueError, match="low_water"):
        LoadPolicy(high_water=high, low_water=low)


def test_adaptive_settings_are_checked():
    settings = ServeSettings(model="runs/x/model", adaptive={"high_water": 24, "low_water": 4})
    assert settings.adaptive.max_accuracy_drop == 0.02 and settings.adaptive.backlog == "requests"
    for adaptive, message in (
        ({"high_water": 4, "low_water": 4}, "must be < high_water"),
        ({"high_water": 4, "low_water": 1, "backlog": "seconds"}, "backlog"),
        ({"high_water": 4, "low_water": 1, "max_accuracy_drop": 2}, "max_accuracy_drop"),
        ({"high_water": 4, "low_water": 1, "colour": "red"}, "colour"),
    ):
        with pytest.raises(ValidationError, match=message):
            ServeSettings(model="runs/x/model", adaptive=adaptive)
    with pytest.raises(ValidationError, match="needs removal packed or masked"):
        ServeSettings(model="runs/x/model", removal="none", adaptive={"high_water": 4, "low_water": 1})
