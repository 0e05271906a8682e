"""Load-adaptive operating point: when a replica falls behind, the requests that named no point
run at a faster stored point, within an accuracy budget; when the backlog is gone, they return
to the default. Requests that named a point are never overridden.

:class:`LoadPolicy` is the switch, plain Python (the Serve app feeds it its backlog; tests feed
it numbers and a fake clock). Hysteresis: it turns *overloaded* as soon as the backlog reaches
``high_water``, and back only once the backlog has stayed at or under ``low_water`` for
``cooldown_s``, so that one quiet moment in a burst does not flip it back and forth.

This acts per replica and at once, before Serve's autoscaling (which waits for its look-back
window and the minutes a new replica takes to load): it absorbs the bursts that autoscaling is
too slow for, and autoscaling still adds replicas if the overload lasts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Switch:
    at: float  # clock time
    overloaded: bool  # the state switched to
    backlog: float  # what triggered it


@dataclass
class LoadPolicy:
    high_water: float  # backlog (requests in the replica, or their tokens) that turns overloaded on
    low_water: float  # backlog at or under which it turns off again, after cooldown_s
    cooldown_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    overloaded: bool = False
    switches: deque[Switch] = field(default_factory=lambda: deque(maxlen=100))  # the latest, oldest first
    _calm_since: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.low_water < self.high_water:
            raise ValueError(f"need 0 <= low_water < high_water, got {self.low_water} and {self.high_water}")
        if self.cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {self.cooldown_s}")

    def update(self, backlog: float) -> bool:
        """The state after seeing ``backlog`` now: True = overloaded."""
        now = self.clock()
        if not self.overloaded:
            if backlog >= self.high_water:
                self._switch(now, True, backlog)
        elif backlog > self.low_water:
            self._calm_since = None
        else:
            self._calm_since = now if self._calm_since is None else self._calm_since
            if now - self._calm_since >= self.cooldown_s:
                self._switch(now, False, backlog)
        return self.overloaded

    def _switch(self, now: float, overloaded: bool, backlog: float) -> None:
        self.overloaded, self._calm_since = overloaded, None
        self.switches.append(Switch(now, overloaded, backlog))
