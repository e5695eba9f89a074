"""The wait verdicts as a table: unit record, reports, placement -> (reached?, why).

Pure functions (fleetd/daemon/service/waits.py): no registry, no engine, no event loop.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import pytest

from fleetd import protocol
from fleetd.daemon.service import waits
from fleetd.registry.base import LAUNCHED, LOADED, ObservedRecord, UnitRecord

CHECK = {"type": "tcp", "on_failure": "restart"}
REPORT_ONLY = {"type": "tcp", "on_failure": "none"}


def unit(desired: str = LAUNCHED, generation: int = 1, reason: str = "") -> UnitRecord:
    return UnitRecord(name="web.service", hash="h", desired=desired, machine="h1",
                      reason=reason, updated_at=1.0, generation=generation)


def seen(machine: str = "h1", state: str = protocol.RUNNING, pid: Optional[int] = 42,
         generation: int = 1, hash: str = "r", health: str = "unknown", restarts: int = 0,
         error: Optional[str] = None) -> ObservedRecord:
    return ObservedRecord(unit="web.service", machine=machine, hash=hash, state=state,
                          pid=pid, started_at=1.0, exit_status=None, restarts=restarts,
                          error=error, updated_at=1.0, generation=generation, health=health)


EXPECTED = {("web.service", "h1"): "r", ("web.service", "h2"): "r"}

# until, unit, reports, where, check -> verdict, why
TABLE = [
    # gone / unplaced
    ("gone", None, [], [], None, True, "gone"),
    ("gone", unit(), [], ["h1"], None, None, "still known"),
    ("gone", None, [seen(state=protocol.STOPPED)], [], None, None, "still on h1 (stopped)"),
    ("unplaced", unit(), [], ["h1"], None, True, "unloaded"),
    ("unplaced", unit(), [seen(), seen("h2")], ["h1"], None, None,
     "still on h1 (running), h2 (running)"),
    # a unit that does not exist, or is not placed
    ("running", None, [], [], None, False, "unit web.service does not exist"),
    ("running", unit(reason="no machine has role=db"), [], [], None, None,
     "not placed: no machine has role=db"),
    ("running", unit(), [], [], None, None, "not placed: waiting for the engine"),
    # running
    ("running", unit(), [seen()], ["h1"], None, True, "running on h1 (pid 42)"),
    ("running", unit(), [seen(state=protocol.STARTING, pid=None)], ["h1"], None, None,
     "starting on h1"),
    ("running", unit(), [seen(state=protocol.FAILED, error="exit 1")], ["h1"], None, False,
     "failed on h1: exit 1"),
    ("running", unit(), [seen(state=protocol.EXITED)], ["h1"], None, False,
     "exited on h1: exited"),
    ("running", unit(), [], ["h1"], None, None, "placed on h1, not reported there yet"),
    # only the current generation and content count
    ("running", unit(generation=2), [seen(generation=1)], ["h1"], None, None,
     "placed on h1, not reported there yet"),
    ("running", unit(), [seen(hash="old")], ["h1"], None, None,
     "placed on h1, not reported there yet"),
    ("running", unit(), [seen(machine="h9")], ["h1"], None, None,
     "placed on h1, not reported there yet"),
    # a Global unit: every machine, the first final no wins
    ("running", unit(), [seen(), seen("h2")], ["h1", "h2"], None, True,
     "running on h1 (pid 42); running on h2 (pid 42)"),
    ("running", unit(), [seen(), seen("h2", protocol.STARTING)], ["h1", "h2"], None, None,
     "running on h1 (pid 42); starting on h2"),
    ("running", unit(), [seen(protocol.STARTING), seen("h2", protocol.FAILED, error="x")],
     ["h1", "h2"], None, False, "failed on h2: x"),
    # stopped
    ("stopped", unit(LOADED), [seen(state=protocol.STOPPED, pid=None)], ["h1"], None, True,
     "stopped on h1"),
    ("stopped", unit(LOADED), [seen(state=protocol.FAILED)], ["h1"], None, True,
     "failed on h1"),
    ("stopped", unit(LOADED), [seen()], ["h1"], None, None, "running on h1"),
    # healthy
    ("healthy", unit(LOADED), [seen()], ["h1"], None, False,
     "no longer launched (desired state loaded)"),
    ("healthy", unit(), [seen()], ["h1"], None, True,
     "healthy on h1 (pid 42, running; no health check)"),
    ("healthy", unit(), [seen()], ["h1"], CHECK, None,
     "running on h1 (pid 42), health check not passing yet"),
    ("healthy", unit(), [seen(health="passing")], ["h1"], CHECK, True,
     "healthy on h1 (pid 42, health check passing)"),
    ("healthy", unit(), [seen(health="failing")], ["h1"], CHECK, None,
     "health check failing on h1 (pid 42); the agent ends it"),
    ("healthy", unit(), [seen(health="failing", error="refused")], ["h1"], REPORT_ONLY,
     False, "health check failing on h1 (pid 42): refused"),
    ("healthy", unit(), [seen(health="passing", restarts=2)], ["h1"], CHECK, False,
     "restarted 2 time(s) on h1 (pid 42) by its policy since this restart"),
    ("healthy", unit(), [seen(state=protocol.STARTING, pid=None, error="killed")], ["h1"],
     CHECK, False, "ended on h1 and is being restarted by its policy: killed"),
    ("healthy", unit(), [seen(state=protocol.STARTING, pid=None)], ["h1"], CHECK, None,
     "starting on h1"),
    # not a state one can wait for (the API refuses it before asking)
    ("sleeping", unit(), [seen()], ["h1"], None, False, "cannot wait until 'sleeping'"),
]


@pytest.mark.parametrize("until, u, reports, where, check, verdict, why", TABLE)
def test_wait_verdict(until: str, u: Optional[UnitRecord], reports: List[ObservedRecord],
                      where: Sequence[str], check: waits.Check, verdict: Optional[bool],
                      why: str) -> None:
    assert waits.wait_verdict("web.service", until, u, reports, where, EXPECTED,
                              check) == (verdict, why)


@pytest.mark.parametrize("until, u, needed", [
    ("healthy", unit(), True),
    ("healthy", unit(LOADED), False),
    ("healthy", None, False),
    ("running", unit(), False),
])
def test_the_check_is_read_only_where_the_verdict_needs_it(
        until: str, u: Optional[UnitRecord], needed: bool) -> None:
    assert waits.needs_check(until, u) is needed


def test_a_report_counts_only_for_the_current_generation_and_content() -> None:
    assert waits.is_current(unit(), seen(), EXPECTED)
    assert not waits.is_current(None, seen(), EXPECTED)
    assert not waits.is_current(unit(generation=3), seen(), EXPECTED)
    assert not waits.is_current(unit(), seen(hash="other"), EXPECTED)
    assert not waits.is_current(unit(), seen(), {})


def test_every_wait_the_api_offers_has_a_verdict() -> None:
    for until in waits.WAIT_UNTIL:
        _, why = waits.wait_verdict("web.service", until, unit(), [seen()], ["h1"],
                                    EXPECTED)
        assert not why.startswith("cannot wait"), until
