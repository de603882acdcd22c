"""Time, injected: timers run on the monotonic clock, wall time is only for display and payloads."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Clock", "Instant", "SystemClock"]


@dataclass(frozen=True, slots=True)
class Instant:
    """One reading of both clocks: `mono` drives every timer, `wall` is what people read."""

    mono: float
    wall: float

    def after(self, seconds: float) -> Instant:
        """The instant `seconds` later on both clocks (for tests and schedules)."""
        return Instant(self.mono + seconds, self.wall + seconds)


class Clock(Protocol):
    """Anything that can tell the time; tests pass a fake one."""

    def now(self) -> Instant:
        """Read both clocks."""
        ...


class SystemClock:
    """The real clocks."""

    __slots__ = ()

    def now(self) -> Instant:
        """Read time.monotonic() and time.time()."""
        return Instant(time.monotonic(), time.time())
