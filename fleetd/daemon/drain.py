"""``fleetctl drain`` / ``undrain``: how a drain reads in listings.

A drain is two fields on the machine (since when, and an optional deadline); the engine
does the moving (engine/handoff.py, a step of the reconciler's pass), one unit at a time,
each healthy on its new machine before its old copy stops. Draining a machine twice keeps
its start time and takes the new deadline, so a deadline can be set or extended while a
drain runs (``service/machines.py``: ``Machines.drain``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from fleetd.registry.base import MachineRecord, UnitRecord

MAX_DEADLINE_S = 366 * 86400.0


def progress(m: MachineRecord, units: List[UnitRecord]) -> Optional[Dict[str, Any]]:
    """A draining machine's drain: since, deadline, and the units still on it (placed
    there, or handing over from there); None when it is not draining."""
    if m.draining is None:
        return None
    left = sorted(u.name for u in units if u.machine == m.name or u.handoff == m.name)
    return {"since": m.draining, "deadline": m.drain_deadline, "left": left,
            "done": not left}
