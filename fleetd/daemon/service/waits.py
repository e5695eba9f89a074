"""Wait verdicts: has a unit reached what ``fleetctl start``/``stop``/``restart`` waits
for, will it never, or not yet? Pure functions of what the registry and the engine's
last pass say (tests/unit/test_wait_verdicts.py is their table); ``units.Units.wait``
reads those and waits for changes between verdicts.

A verdict is ``(True, why)``: reached; ``(False, why)``: will not be reached (the wait
ends with the why); ``(None, why)``: not yet. Only a report of the unit's current
generation and content counts (``is_current``): a report from before a restart, or of
content the engine no longer wants on that machine, says nothing about this run.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Tuple

from fleetd import protocol
from fleetd.registry.base import LAUNCHED, ObservedRecord, UnitRecord
from fleetd.units.xcheck import acts_on_failing
from fleetd.wire import unitspec

Verdict = Tuple[Optional[bool], str]
Expected = Mapping[Tuple[str, str], str]  # (unit, machine) -> hash rendered for it
Check = Optional[unitspec.Check]  # a unit's [X-Check] config; None without one

WAIT_UNTIL = ("running", "healthy", "stopped", "gone", "unplaced")
MAX_WAIT_S = 3600.0  # one wait answers "timeout" after this at most; fleetctl asks again


def is_current(u: Optional[UnitRecord], o: ObservedRecord, expected: Expected) -> bool:
    """Is this report about the content and generation fleetd wants on that machine now?
    (The agent reports the hash of the unit as rendered for its machine.)"""
    return (u is not None and o.generation == u.generation
            and o.hash == expected.get((u.name, o.machine)))


def wait_verdict(name: str, until: str, u: Optional[UnitRecord],
                 copies: Sequence[ObservedRecord], where: Sequence[str],
                 expected: Expected, check: Check = None) -> Verdict:
    """The verdict on unit ``name`` (``u``: its record, None if it does not exist) for
    ``until`` (one of WAIT_UNTIL): ``copies`` are its observed rows, ``where`` the
    machines it should be on, ``check`` its [X-Check] (read only for ``healthy``)."""
    if until in ("gone", "unplaced"):
        if (u is None or until == "unplaced") and not copies:
            return True, "gone" if u is None else "unloaded"
        if copies:
            return None, "still on " + ", ".join(f"{o.machine} ({o.state})" for o in copies)
        return None, "still known"
    if u is None:
        return False, f"unit {name} does not exist"
    if until == "healthy" and u.desired != LAUNCHED:
        return False, f"no longer launched (desired state {u.desired})"
    if not where:
        return None, f"not placed: {u.reason or 'waiting for the engine'}"
    verdicts = [verdict_on(u, m, copies, until, expected, check if until == "healthy"
                           else None) for m in where]
    for reached, why in verdicts:
        if reached is False:
            return False, why
    whys = "; ".join(why for _, why in verdicts)
    if all(reached for reached, _ in verdicts):
        return True, whys
    return None, whys


def needs_check(until: str, u: Optional[UnitRecord]) -> bool:
    """Does ``wait_verdict`` read the unit's [X-Check] for this wait? (Reading it
    renders the unit: skipped where the verdict does not need it.)"""
    return until == "healthy" and u is not None and u.desired == LAUNCHED


def verdict_on(u: UnitRecord, machine: str, copies: Sequence[ObservedRecord], until: str,
               expected: Expected, check: Check = None) -> Verdict:
    """The verdict on the unit's copy on one of its machines."""
    here = next((o for o in copies if o.machine == machine), None)
    if here is None or not is_current(u, here, expected):
        # a report of an earlier generation (before a restart) or content never counts
        return None, f"placed on {machine}, not reported there yet"
    if until == "running":
        if here.state == protocol.RUNNING:
            return True, f"running on {machine} (pid {here.pid})"
        if here.state in (protocol.FAILED, protocol.EXITED):
            return False, f"{here.state} on {machine}: {here.error or 'exited'}"
        return None, f"{here.state} on {machine}"
    if until == "healthy":
        return healthy_verdict(here, check)
    if until == "stopped":
        done = here.state in (protocol.STOPPED, protocol.EXITED, protocol.FAILED)
        return (True if done else None), f"{here.state} on {machine}"
    return False, f"cannot wait until {until!r}"


def healthy_verdict(o: ObservedRecord, check: Check) -> Verdict:
    """Is this current report of a unit (``check``: its [X-Check], None without one)
    healthy: running the program this generation started - no end and restart since -
    with its check passing? A rolling restart goes on only past a healthy unit, so
    anything that shows the new run went wrong is a final no, with the agent's why."""
    machine = o.machine
    pid = f" (pid {o.pid})" if o.pid else ""
    if o.state in (protocol.FAILED, protocol.EXITED):
        return False, f"{o.state} on {machine}: {o.error or 'exited'}"
    if o.state == protocol.STARTING and o.error:  # it ended; Restart= starts it again
        return False, f"ended on {machine} and is being restarted by its policy: {o.error}"
    if o.restarts:
        return False, (f"restarted {o.restarts} time(s) on {machine}{pid} by its policy "
                       "since this restart" + (f": {o.error}" if o.error else ""))
    if o.state != protocol.RUNNING:
        return None, f"{o.state} on {machine}"
    if check is None or o.health == "passing":
        how = "running; no health check" if check is None else "health check passing"
        return True, f"healthy on {machine} ({f'pid {o.pid}, ' if o.pid else ''}{how})"
    if o.health == "failing":
        if acts_on_failing(check):  # the agent is ending the run: its report says why
            return None, f"health check failing on {machine}{pid}; the agent ends it"
        return False, f"health check failing on {machine}{pid}" + (
            f": {o.error}" if o.error else "")
    return None, f"running on {machine}{pid}, health check not passing yet"
