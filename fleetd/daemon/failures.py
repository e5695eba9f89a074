"""What fleetd tells users about a unit's failures: its reschedule attempts and why.

The engine decides (engine/reconciler.py); this only reads the record back for
``list-unit-files`` and ``status``, counted by the policy the reconciler counts by
(``Reschedule.counted``, ``Reschedule.used``): failures of the current content within
its interval.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

from fleetd.registry.base import FailureRecord, UnitRecord
from fleetd.units.xfleet import Requirements, Reschedule


def reschedule_info(u: UnitRecord, req: Optional[Requirements],
                    failures: Sequence[FailureRecord], now: float) -> Dict[str, Any]:
    """``attempts``: the policy's limit (None: unlimited); ``used``: reschedules spent in
    the interval; ``failures``: the ones counted, oldest first, with their reasons."""
    policy = req.reschedule if req is not None else Reschedule()
    current = [f for f in failures if f.hash == u.hash]
    window = policy.counted(current, now)
    return {
        "attempts": policy.attempts,
        "interval_s": policy.interval_s,
        "used": policy.used(current, now),
        "failures": [{"machine": f.machine, "at": f.at, "reason": f.reason} for f in window],
    }
