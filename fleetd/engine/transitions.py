"""Which events a change of records is: pure functions from what was to what is.

Each takes the records as they were and as they are now (and, for the engine, what its
pass decided, with the reasons) and returns the events (``events.Draft``) to publish,
with the reason in words. Nothing here reads a clock or a store: the callers are the
engine's pass (units and machines as stored, the placements it decided, the failures it
counted), a machine session (what an agent reports of each unit) and liveness (a
machine's state); fleetd.engine.events numbers and keeps what they publish.

A unit's report says its state, pid, exit status, restart count and health; from two
reports in a row: ``started`` (running, with its pid), ``exited`` (its status or why,
and whether it restarts), ``restarted`` (by Restart=, the count grew), ``failed``,
``stopped``, ``health`` (passing <-> failing). The agent reports ``starting`` between an
exit and its restart, so a killed program shows as exited then restarted.

A rollout's pass (engine/rollout.py ``Rollout``) makes its steps' events: ``rollout-change``
(a copy given new content, and why), ``rollout-healthy`` (a changed copy healthy for
MinHealthySec=: the next may go), ``rollout-revert`` (AutoRevert= puts the old content
back), and one per change of the rollout's phase: ``rollout-rolling``,
``rollout-waiting``, ``rollout-canary`` (waiting for promote), ``rollout-promoted``,
``rollout-done``, ``rollout-stopped`` (a copy failed), ``rollout-reverting``,
``rollout-reverted``.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

from fleetd import protocol
from fleetd.engine.events import Draft
from fleetd.engine.reconciler import Place
from fleetd.engine.rollout import Rollout, Where
from fleetd.registry.base import FailureRecord, MachineRecord, ObservedRecord, UnitRecord

ACTIVE = (protocol.RUNNING,)
QUIET = (protocol.STARTING, protocol.STOPPING)  # steps on the way: no event of their own


def observed(before: Optional[ObservedRecord], now: ObservedRecord,
             at_connect: bool = False) -> List[Draft]:
    """What one unit's new report on a machine says happened since the last one.
    ``at_connect``: the report is from the snapshot an agent sends when its session
    begins; a unit this fleetd has not heard of before (it started, or it was elsewhere)
    is ``found`` as it is, not said to have started now."""
    unit, machine = now.unit, now.machine
    out: List[Draft] = []

    def say(kind: str, reason: str, **fields: object) -> None:
        out.append(Draft(kind, reason, unit, machine,
                         {"state": now.state, "restarts": now.restarts, **fields}))

    if before is None and at_connect:
        say("found", f"{now.state} when its agent connected"
            + (f", pid {now.pid}" if now.pid is not None else ""), pid=now.pid)
        return out
    fresh = before is None or before.hash != now.hash or before.generation != now.generation
    was = None if fresh or before is None else before.state
    restarted = before is not None and not fresh and now.restarts > before.restarts
    if now.state == protocol.RUNNING:
        if restarted or (was == protocol.RUNNING and before is not None
                         and before.pid != now.pid and now.pid is not None):
            say("restarted", f"restarted by its Restart= policy (restart {now.restarts}), "
                             f"pid {now.pid}", pid=now.pid)
        elif was != protocol.RUNNING:
            say("started", f"running, pid {now.pid}", pid=now.pid)
    elif now.state == protocol.STARTING and was == protocol.RUNNING:
        say("exited", f"{_ended(now)}; to be restarted by its Restart= policy",
            exit_status=now.exit_status)
    elif now.state in (protocol.EXITED, protocol.FAILED) and was != now.state:
        kind = "exited" if now.state == protocol.EXITED else "failed"
        say(kind, _ended(now), exit_status=now.exit_status)
    elif now.state == protocol.STOPPED and was not in (None, protocol.STOPPED):
        say("stopped", now.error or "stopped as desired")
    if (before is not None and not fresh and before.health != now.health
            and now.health in ("passing", "failing")):
        say("health", f"health check {before.health} -> {now.health}"
                      + (f": {now.error}" if now.health == "failing" and now.error else ""),
            health=now.health)
    return out


def _ended(o: ObservedRecord) -> str:
    if o.error:
        return o.error
    return f"exited with status {o.exit_status}" if o.exit_status is not None else "ended"


def machine_state(name: str, before: str, now: str, reason: Optional[str]) -> List[Draft]:
    """A machine's state changed (up, unreachable, lost, error): ``machine-<state>``."""
    if before == now:
        return []
    why = reason or ("its agent answered" if now == "up" else now)
    return [Draft(f"machine-{now}", why, None, name, {"was": before})]


def engine_pass(known: Optional[Mapping[str, UnitRecord]],
                machines_known: Optional[Mapping[str, MachineRecord]],
                units: Sequence[UnitRecord], machines: Sequence[MachineRecord],
                tasks: Sequence[Place], failures: Sequence[FailureRecord]) -> List[Draft]:
    """What one of the leader's passes saw and did: units submitted, destroyed, their
    desired state or content changed (``known``: the units as the last pass left them;
    None on a term's first pass, which has nothing to compare with), drains begun and
    ended; failures it counted; and its placements, each with the reconciler's reason."""
    out: List[Draft] = []
    if known is not None:
        now = {u.name: u for u in units}
        for u in units:
            was = known.get(u.name)
            if was is None:
                out.append(Draft("submitted", f"submitted, desired {u.desired}", u.name,
                                 None, {"desired": u.desired}))
                continue
            if was.desired != u.desired:
                out.append(Draft("desired", f"desired {was.desired} -> {u.desired}",
                                 u.name, u.machine, {"desired": u.desired}))
            if was.hash != u.hash:
                out.append(Draft("replaced", "new content submitted", u.name, u.machine,
                                 {"hash": u.hash}))
            elif was.generation != u.generation:
                out.append(Draft("restart-requested", f"restart asked (generation "
                                 f"{u.generation})", u.name, u.machine, {}))
        for name, was in known.items():
            if name not in now:
                out.append(Draft("destroyed", "destroyed", name, was.machine, {}))
    if machines_known is not None:
        for m in machines:
            old = machines_known.get(m.name)
            if old is not None and (old.draining is None) != (m.draining is None):
                out.append(Draft("drain" if m.draining is not None else "undrain",
                                 "drain begun: its units move to other machines one at a "
                                 "time" if m.draining is not None else "drain ended",
                                 None, m.name, {}))
    for f in failures:
        out.append(Draft("failure-counted", f"failed here: {f.reason} (counted by the "
                         "reschedule policy)", f.unit, f.machine, {}))
    before: Dict[str, Optional[str]] = {u.name: u.machine for u in (known or {}).values()}
    before.update({u.name: u.machine for u in units})
    for t in tasks:
        out.append(_placed(t, before.get(t.unit)))
    return out


def _placed(t: Place, was: Optional[str]) -> Draft:
    fields = {"from": t.handoff or was} if (t.handoff or was) and was != t.machine else {}
    if t.machine is None:
        return Draft("unplaced", t.reason, t.unit, was, fields)
    if t.retry:
        kind = "retried"
    elif t.handoff:
        kind = "handoff"  # a drain's step: the old copy runs until this one is ready
    elif was is not None and was != t.machine:
        kind = "rescheduled"
    else:
        kind = "placed"
    return Draft(kind, t.reason, t.unit, t.machine, fields)


def rollout(r: Rollout, in_flight_before: Mapping[str, Sequence[Where]],
            reasons_before: Mapping[str, str]) -> List[Draft]:
    """The events of one rollout pass. ``in_flight_before``: each rollout's copies in
    flight as the last pass left them (a copy gone from them while the rollout neither
    stopped nor went back is healthy now); ``reasons_before``: each rollout's status
    line before this pass (a canary that goes on rolling was promoted)."""
    out: List[Draft] = []
    for name, before in sorted(in_flight_before.items()):
        if r.phase.get(name) in ("stopped", "reverting") or name not in r.in_flight:
            continue  # the copies left in flight failed, or the rollout is gone
        now = set(r.in_flight[name])
        for unit, machine in before:
            if (unit, machine) not in now:
                on = f" on {machine}" if machine else ""
                out.append(Draft("rollout-healthy", f"{name}: {unit}{on} healthy for "
                                 "MinHealthySec= (MaxParallel= counts it done)", unit,
                                 machine, {"rollout": name}))
    for c in r.changes:
        out.append(Draft("rollout-change", c.reason, c.unit, c.machine,
                         {"hash": c.hash}))
    for v in r.reverts:
        out.append(Draft("rollout-revert", v.reason, v.template, None,
                         {"hash": v.hash, "version": v.number}))
    for name, status in sorted(r.status.items()):
        phase = r.phase.get(name, "rolling")
        if phase == "rolling" and ": canary, " in reasons_before.get(name, ""):
            phase = "promoted"
        out.append(Draft(f"rollout-{phase}", status, name, None, {}))
    return out
