"""What fleetd tells users about a unit's failures: its reschedule attempts and why.

The engine decides (engine/reconciler.py); this only reads the record back for
``list-unit-files`` and ``status``, counted as the reconciler counts: failures of the
current content within the policy's interval.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from fleetd.registry.base import FailureRecord, UnitRecord
from fleetd.units.xfleet import Requirements, Reschedule


def reschedule_info(u: UnitRecord, req: Optional[Requirements],
                    failures: Sequence[FailureRecord], now: float) -> Dict[str, Any]:
    """``attempts``: the policy's limit (None: unlimited); ``used``: reschedules spent in
    the interval; ``failures``: the ones counted, oldest first, with their reasons."""
    policy = req.reschedule if req is not None else Reschedule()
    window: List[FailureRecord] = [f for f in failures if f.hash == u.hash
                                   and f.at > now - policy.interval_s]
    used = len(window) if policy.attempts is None else min(len(window), policy.attempts)
    return {
        "attempts": policy.attempts,
        "interval_s": policy.interval_s,
        "used": used,
        "failures": [{"machine": f.machine, "at": f.at, "reason": f.reason} for f in window],
    }
