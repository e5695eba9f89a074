"""Registry records as the pure engine sees them: machines' capacities, units' failures.

Pure functions from storage records (fleetd/registry/base.py) to the reconciler's views
(engine/views.py); the loop (engine/loop.py) reads the records and calls these.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

from fleetd.engine.views import MachineView
from fleetd.registry.base import FAILURES_KEPT, FailureRecord, MachineRecord, UnitRecord
from fleetd.units.render import MachineContext
from fleetd.wire.numbers import NumberError, json_float, json_int

log = logging.getLogger("fleetd.engine")

Number = TypeVar("Number", int, float)
PlacementRow = Tuple[str, Optional[str], str]  # unit, machine (None: unplaced), reason
MAX_CPUS = 1_000_000.0  # what a machine's facts may claim; more is an agent's bug
MAX_MEMORY = 1 << 62


def failed_here(u: UnitRecord, failures: Sequence[FailureRecord]) -> Optional[FailureRecord]:
    """The failure of ``u``'s current content on its machine since it was placed there
    (the newest), if any: what the reconciler acts on, recorded once per placement."""
    since = u.placed_at or 0.0
    return next((f for f in reversed(failures) if f.machine == u.machine
                 and f.hash == u.hash and f.at >= since), None)


def _fact(m: MachineRecord, key: str, read: Callable[[object], Number]) -> Number | int:
    """A capacity from the agent's facts, or 0 (unknown, as before its first report)
    when it is missing or no sane number: a NaN there would break every pass."""
    value = (m.facts or {}).get(key)
    if value is None:
        return 0
    try:
        return read(value)
    except NumberError as exc:
        log.warning("%s: fact %s: %s; counted as unknown", m.name, key, exc)
        return 0


def machine_view(m: MachineRecord) -> MachineView:
    """A machine as the scheduler sees it: capacity and capabilities from its facts."""
    facts = m.facts or {}
    return MachineView(
        name=m.name, machine_id=m.machine_id, up=m.state == "up", metadata=m.metadata,
        cpus=_fact(m, "cpus", lambda v: json_float(v, 0.0, MAX_CPUS)),
        memory_bytes=_fact(m, "memory_bytes", lambda v: json_int(v, 0, MAX_MEMORY)),
        capabilities=frozenset(str(c) for c in facts.get("capabilities") or ()),
        lost=(m.error or "silent past its TTL") if m.state == "lost" else None,
        draining=m.draining is not None,
    )


def machine_context(m: MachineRecord) -> MachineContext:
    """What a unit's template may read of the machine it is rendered for."""
    return MachineContext(m.name, m.address, m.machine_id or "", m.metadata, m.facts)


def recorded(failures: Dict[str, List[FailureRecord]], new: Sequence[FailureRecord]
             ) -> Dict[str, List[FailureRecord]]:
    """The failures on record once ``new`` are recorded (the registry keeps the newest
    FAILURES_KEPT per unit, oldest first)."""
    if not new:
        return failures
    out = dict(failures)
    for f in new:
        out[f.unit] = sorted([*out.get(f.unit, []), f], key=lambda r: r.at)[-FAILURES_KEPT:]
    return out


def applied(units: List[UnitRecord], placements: Sequence[PlacementRow],
            tasks: Sequence[Tuple[str, Optional[str], bool]], now: float) -> List[UnitRecord]:
    """The units as the registry holds them once ``set_placements`` wrote these (its
    contract: machine and reason, ``placed_at`` moving with the machine; ``tasks``: each
    unit's hand-off and whether it is a retry, a new generation), ``now`` standing for
    the registry's clock."""
    if not placements:
        return units
    moved = {unit: (machine, reason) for unit, machine, reason in placements}
    by_task = {unit: (handoff, retry) for unit, handoff, retry in tasks}
    out = []
    for u in units:
        if u.name in moved:
            machine, reason = moved[u.name]
            u = dataclasses.replace(u, machine=machine, reason=reason,
                                    placed_at=u.placed_at if machine == u.machine else now)
        if u.name in by_task:
            handoff, retry = by_task[u.name]
            u = dataclasses.replace(u, handoff=handoff)
            if retry:
                u = dataclasses.replace(u, generation=u.generation + 1, placed_at=now)
        out.append(u)
    return out
