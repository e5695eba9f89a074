"""Units and machines as the API shows them: plain JSON rows, built from records and
the engine's placement. Pure: no registry, no I/O (a machine's link is what this
process's SSH transport last did, read from fleetd.transport.forward)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from fleetd.daemon.failures import reschedule_info
from fleetd.daemon.service.placement import Placement, targets
from fleetd.daemon.service.waits import is_current
from fleetd.registry.base import FailureRecord, MachineRecord, ObservedRecord, UnitRecord


def observed_row(o: ObservedRecord) -> Dict[str, Any]:
    return {"unit": o.unit, "machine": o.machine, "state": o.state, "pid": o.pid,
            "hash": o.hash, "started_at": o.started_at, "exit_status": o.exit_status,
            "restarts": o.restarts, "error": o.error, "health": o.health,
            "generation": o.generation}


def unit_rows(placement: Placement, units: List[UnitRecord], observed: List[ObservedRecord],
              addresses: Optional[Mapping[str, str]] = None) -> List[Dict[str, Any]]:
    """One row per unit per machine where it is placed or where a copy still runs,
    each with where it is: its machine's ``address`` (from ``addresses``, machine ->
    the address fleetd reaches it at; None for a machine it does not know) and the
    ``ports`` its unit declares (``Ports=``, ``["8080/tcp"]``), so that a person or a
    program finds it without asking which host a machine name is."""
    by_key = {(o.unit, o.machine): o for o in observed}
    addresses = addresses or {}
    ports = {u.name: [str(p) for p in getattr(placement.requirements_of(u), "ports", ())]
             for u in units}
    expected = placement.expected()
    rows: List[Dict[str, Any]] = []
    seen: Set[Tuple[str, str]] = set()
    for u in units:
        for machine in targets(placement, u):
            o = by_key.get((u.name, machine))
            seen.add((u.name, machine))
            row: Dict[str, Any] = observed_row(o) if o else {
                "unit": u.name, "machine": machine, "state": "-", "pid": None}
            row["desired"] = u.desired
            row["current"] = o is not None and is_current(u, o, expected)
            rows.append(row)
    for key, o in by_key.items():
        if key not in seen:  # a copy the host still has, not (or no longer) placed there
            rows.append({**observed_row(o), "desired": "-", "current": False})
    for row in rows:
        row["address"] = addresses.get(row["machine"])
        row["ports"] = ports.get(row["unit"], [])
    rows.sort(key=lambda r: (r["unit"], r["machine"]))
    return rows


def unit_file_row(placement: Placement, u: UnitRecord,
                  observed: Dict[Tuple[str, str], ObservedRecord],
                  failures: Mapping[str, Sequence[FailureRecord]], now: float
                  ) -> Dict[str, Any]:
    where = targets(placement, u)
    states = sorted({observed[(u.name, m)].state for m in where if (u.name, m) in observed})
    state = ",".join(states) or ("inactive" if not where else "-")
    machine = u.machine if u.name not in placement.global_targets() \
        else f"global ({len(where)})"
    return {"unit": u.name, "hash": u.hash, "desired": u.desired, "state": state,
            "machine": machine, "machines": where, "reason": u.reason,
            "handoff": u.handoff,
            "reschedule": reschedule_info(u, placement.requirements_of(u),
                                          failures.get(u.name, ()), now)}


def machine_row(m: MachineRecord, units: int, last_seen: Optional[float],
                drained: Optional[Dict[str, Any]] = None,
                link: Optional[str] = None) -> Dict[str, Any]:
    return {"name": m.name, "address": m.address, "port": m.port, "user": m.user,
            "state": m.state, "error": m.error, "metadata": m.metadata,
            "machine_id": m.machine_id, "units": units, "last_seen": last_seen,
            "facts": m.facts, "drain": drained,
            # "forwarded" (nothing but the agent on the host) or "relay (why)"; None
            # while this fleetd has no session there
            "link": link}
