"""Desired + observed state -> placement tasks, each with a human reason.

Pure, like fleet's engine reconciler: the loop (engine/loop.py) gathers the inputs and
applies the tasks. A task changes one unit's placement; the reason is stored with the
unit and shown by ``fleetctl list-unit-files`` so nobody has to guess why a unit sits
where it sits (or nowhere).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

from fleetd.engine.scheduler import Candidate, choose
from fleetd.registry.base import INACTIVE, MachineRecord, UnitRecord


@dataclasses.dataclass(frozen=True)
class Place:
    """Put ``unit`` on ``machine`` (None: leave it unplaced) because of ``reason``."""

    unit: str
    machine: Optional[str]
    reason: str


def plan(units: Sequence[UnitRecord], machines: Sequence[MachineRecord]) -> List[Place]:
    """The placement changes that bring ``units`` in line with ``machines``."""
    known = {m.name for m in machines}
    candidates = [Candidate(name=m.name, up=m.state == "up") for m in machines]
    load: Dict[str, int] = {}
    for u in units:
        if u.machine in known and u.desired != INACTIVE:
            load[u.machine] = load.get(u.machine, 0) + 1

    tasks: List[Place] = []
    for u in units:
        if u.desired == INACTIVE:
            if u.machine is not None:
                tasks.append(Place(u.name, None, "unloaded: desired state is inactive"))
            continue
        if u.machine in known:
            continue
        target, why = choose(u.name, candidates, load)
        if u.machine is not None:
            why = f"machine {u.machine} was removed; {why}"
        if target is None:
            # keep "machine X was removed; ..." rather than rewriting it every pass
            if u.machine is not None or not u.reason.endswith(why):
                tasks.append(Place(u.name, None, why))
            continue
        load[target] = load.get(target, 0) + 1
        tasks.append(Place(u.name, target, why))
    return tasks
