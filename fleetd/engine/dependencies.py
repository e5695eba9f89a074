"""[Unit] dependencies between fleet units, wherever each runs: which units are held
stopped this pass, and why.

systemd.unit(5)'s meaning, turned from jobs in one machine's transaction into a level
that each pass recomputes from the units' desired state and what the agents report:

- ``After=b`` (and ``b``'s ``Before=``) orders starts: a unit that is not running yet
  waits, held stopped, while ``b`` is being started (desired launched) and is not yet
  ready: running where it is placed and, if it has an ``[X-Check]``, passing it. A
  ``b`` that is not being started does not hold anyone: After= alone does not pull.
  A unit already running is never stopped by ordering, as in systemd, where ordering
  only delays start jobs.
- ``Requires=b`` without After= starts both in parallel (no wait); when ``b`` is not
  started (``fleetctl stop``/``unload``/``destroy``: its desired state is not launched)
  the unit is held stopped too, as systemd propagates an explicit stop. A unit held so
  counts as stopped for the units that require it in turn.
- ``BindsTo=b`` is Requires= plus: ``b`` failing where it runs (it stopped
  unexpectedly) holds the unit stopped, until ``b`` runs again.
- ``Wants=b`` never holds: a missing or stopped ``b`` is not the unit's failure.
- Units whose ordering is circular (``a`` After= ``b`` After= ``a``, with both being
  started) are all held, the cycle named, every pass the same: systemd breaks such a
  cycle by dropping a job at random, which across a cluster would flap.

Two differences from one systemd, both because fleetd holds a desired level rather
than running one-shot jobs: starting a unit does not start the units it requires or
wants (each fleet unit is started by its own ``fleetctl start``; one that is not
started holds its Requires=/BindsTo= dependents stopped, saying which), and a unit held
because its requirement was stopped starts again once that requirement is started
again (systemd would leave it stopped until started by hand).

Global units neither wait nor hold others (they run on many machines, so "ready" has
no one answer). Names that are not fleet units never reach here (units/deps.py).
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Set, Tuple

from fleetd.engine.ordering import cycle_path, cycles
from fleetd.engine.views import UnitView
from fleetd.registry.base import LAUNCHED

CIRCULAR = "After=/Before= ordering is circular: {path}; none of them starts"
NOT_STARTED = "stopped: it {kind}={dep}, which is not started"
FAILED = "stopped: it BindsTo={dep}, which failed on {machine}"
WAITING = "waiting for {dep} to be ready ({why})"


def held(units: Mapping[str, UnitView]) -> Dict[str, str]:
    """Each launched unit that must not run now, and why (see the module's docstring)."""
    fleet = {n: u for n, u in units.items() if not u.req.is_global}
    starting = {n for n, u in fleet.items() if u.desired == LAUNCHED}
    out: Dict[str, str] = {}
    order = _ordering(fleet)
    graph = {n: sorted(b for b, _ in order[n] if b in starting) for n in sorted(starting)}
    for component in cycles(graph):
        text = CIRCULAR.format(path=" -> ".join(cycle_path(graph, component)))
        for n in component:
            out[n] = text
    _stops(fleet, starting, out)
    for n in sorted(starting):
        if n in out or fleet[n].running:
            continue
        for b, why in order[n]:
            if b in starting and (b in out or not fleet[b].ready):
                out[n] = WAITING.format(dep=b, why=why)
                break
    return out


def _ordering(fleet: Mapping[str, UnitView]) -> Dict[str, List[Tuple[str, str]]]:
    """Each unit -> the units it starts after, with the line that says so."""
    order: Dict[str, List[Tuple[str, str]]] = {n: [] for n in fleet}
    for n in sorted(fleet):
        for b in fleet[n].req.deps.after:
            if b in fleet:
                order[n].append((b, f"After={b}"))
        for a in fleet[n].req.deps.before:
            if a in fleet:
                order[a].append((n, f"{n} has Before={a}"))
    return order


def _stops(fleet: Mapping[str, UnitView], starting: Set[str], out: Dict[str, str]) -> None:
    """Requires=/BindsTo=: held because a requirement is not started (or, BindsTo=,
    failed), transitively, until nothing changes."""
    stopped = {n for n in fleet if n not in starting}
    changed = True
    while changed:
        changed = False
        for n in sorted(starting - stopped):
            if n in out:
                continue
            deps = fleet[n].req.deps
            why = None
            for kind, names in (("Requires", deps.requires), ("BindsTo", deps.binds_to)):
                for dep in names:
                    if dep in stopped:
                        why = why or NOT_STARTED.format(kind=kind, dep=dep)
                    failed = fleet[dep].failed if dep in fleet else None
                    if kind == "BindsTo" and failed is not None and dep in starting:
                        why = why or FAILED.format(dep=dep, machine=failed.machine)
            if why is not None:
                out[n] = why
                stopped.add(n)
                changed = True
