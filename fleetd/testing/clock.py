"""A clock that moves only when the test says so.

Pass it where fleetd takes a clock (``MemoryRegistry(clock=...)``) and its ``now`` to
the engine's pass (``Engine.reconcile_once(now=clock.now)``), so reschedule delays,
fences and drain deadlines are crossed by ``advance``, never by sleeping.
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move time forward (never back) and return the new time."""
        if seconds < 0:
            raise ValueError("time does not go back")
        self.now += seconds
        return self.now
