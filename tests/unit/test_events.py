"""Events (issue 18): the bounded, numbered history and its long poll
(fleetd/engine/events.py), what a change of records is (fleetd/engine/transitions.py),
the engine's pass publishing with its reasons, and GET /v1/events over a real Daemon."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any, List

from apikit import http, post, served
from test_engine_loop import SERVICE, Fleet

from fleetd import protocol
from fleetd.engine import transitions
from fleetd.engine.events import Bus, Draft, Filter, History
from fleetd.engine.leader import Status
from fleetd.engine.reconciler import Place
from fleetd.registry.base import ObservedRecord
from fleetd.testing.registry import at_once


def draft(kind: str = "started", unit: str = "a.service", machine: str = "h1") -> Draft:
    return Draft(kind, "why", unit, machine, {})


# --- the history ---------------------------------------------------------------------
def test_ids_grow_by_one_and_resume_from_the_last_seen() -> None:
    h = History()
    for i in range(5):
        h.add(draft(unit=f"u{i}.service"), at=float(i))
    assert [e.id for e in h.after(0).events] == [1, 2, 3, 4, 5]
    page = h.after(3)
    assert [e.id for e in page.events] == [4, 5] and page.last == 5 and page.missed == 0
    assert h.after(5).events == [] and h.after(5).last == 5
    assert [e.id for e in h.after(1, limit=2).events] == [2, 3]


def test_the_history_is_bounded_and_says_what_a_late_reader_missed() -> None:
    h = History(limit=3)
    for _ in range(10):
        h.add(draft(), at=0.0)
    page = h.after(2)
    assert [e.id for e in page.events] == [8, 9, 10]
    assert page.missed == 5  # 3..7 were dropped before this read
    assert h.after(7).missed == 0 and [e.id for e in h.after(7).events] == [8, 9, 10]


def test_an_id_from_before_a_restart_reads_from_the_start() -> None:
    h = History()
    h.add(draft(), at=0.0)
    page = h.after(400)  # the consumer saw 400 events of the fleetd before this one
    assert page.reset and [e.id for e in page.events] == [1]


def test_filters_by_unit_glob_and_machine() -> None:
    h = History()
    h.add(draft(unit="web@1.service", machine="h1"), 0.0)
    h.add(draft(unit="web@2.service", machine="h2"), 0.0)
    h.add(draft(unit="db.service", machine="h1"), 0.0)
    h.add(Draft("machine-lost", "silent", None, "h1"), 0.0)
    assert [e.id for e in h.after(0, Filter(unit="web@*.service")).events] == [1, 2]
    assert [e.id for e in h.after(0, Filter(machine="h1")).events] == [1, 3, 4]
    assert [e.id for e in h.after(0, Filter("web@*", "h2")).events] == [2]
    assert [e.id for e in h.tail(2, Filter(machine="h1"))] == [3, 4]
    assert h.tail(0) == []


def test_a_long_poll_returns_when_a_wanted_event_comes() -> None:
    async def go() -> List[Any]:
        bus = Bus()
        waiting = asyncio.ensure_future(bus.wait(0, Filter(unit="b.service"), 5.0))
        await asyncio.sleep(0.01)
        bus.publish(draft(unit="a.service"))  # not wanted: it keeps waiting
        await asyncio.sleep(0.01)
        assert not waiting.done()
        bus.publish(draft(unit="b.service"))
        page = await asyncio.wait_for(waiting, 1.0)
        empty = await bus.wait(2, Filter(), 0.05)
        return [[e.id for e in page.events], empty.events, empty.last]
    assert asyncio.run(go()) == [[2], [], 2]


# --- transitions -----------------------------------------------------------------------
def report(state: str, pid: Any = 10, restarts: int = 0, **kw: Any) -> ObservedRecord:
    return ObservedRecord(unit="a.service", machine="h1", hash="x", state=state, pid=pid,
                          started_at=None, exit_status=kw.get("exit_status"),
                          restarts=restarts, error=kw.get("error"), updated_at=0.0,
                          health=kw.get("health", "unknown"))


def kinds(drafts: List[Draft]) -> List[str]:
    return [d.kind for d in drafts]


def test_a_killed_program_reads_as_exited_then_restarted() -> None:
    running = report(protocol.RUNNING, pid=10)
    assert kinds(transitions.observed(None, running)) == ["started"]
    killed = report(protocol.STARTING, pid=None, error="killed by signal 9", exit_status=None)
    out = transitions.observed(running, killed)
    assert kinds(out) == ["exited"] and "killed by signal 9" in out[0].reason
    again = report(protocol.RUNNING, pid=11, restarts=1)
    out = transitions.observed(killed, again)
    assert kinds(out) == ["restarted"] and "restart 1" in out[0].reason
    assert out[0].fields["restarts"] == 1 and out[0].machine == "h1"
    assert transitions.observed(again, again) == []  # the same report again: nothing


def test_a_snapshot_at_connect_finds_units_rather_than_starting_them() -> None:
    running = report(protocol.RUNNING, pid=10, restarts=4)
    found = transitions.observed(None, running, at_connect=True)
    assert kinds(found) == ["found"]
    assert found[0].reason == "running when its agent connected, pid 10"
    # a unit known before the session dropped: what changed meanwhile, as any report
    again = report(protocol.RUNNING, pid=12, restarts=5)
    assert kinds(transitions.observed(running, again, at_connect=True)) == ["restarted"]


def test_exit_status_failure_stop_and_health() -> None:
    running = report(protocol.RUNNING, health="passing")
    done = transitions.observed(running, report(protocol.EXITED, exit_status=0))
    assert kinds(done) == ["exited"] and done[0].reason == "exited with status 0"
    failed = transitions.observed(running, report(protocol.FAILED, exit_status=3))
    assert kinds(failed) == ["failed"] and failed[0].fields["exit_status"] == 3
    assert kinds(transitions.observed(running, report(protocol.STOPPED))) == ["stopped"]
    sick = transitions.observed(running, report(protocol.RUNNING, health="failing",
                                                error="check: exit 1"))
    assert kinds(sick) == ["health"] and "passing -> failing" in sick[0].reason


def test_machine_state_changes() -> None:
    assert transitions.machine_state("h1", "up", "up", None) == []
    lost = transitions.machine_state("h1", "up", "lost", "silent for 9.0s (TTL 8s)")
    assert kinds(lost) == ["machine-lost"] and lost[0].reason.startswith("silent")


def test_placements_say_why_and_where_from() -> None:
    out = transitions.engine_pass(
        None, None, [], [],
        [Place("a.service", "h1", "least loaded"),
         Place("b.service", "h2", "machine h1 lost"),
         Place("c.service", "h2", "drain of h1", handoff="h1"),
         Place("d.service", None, "no machine fits")], [])
    assert kinds(out) == ["placed", "placed", "handoff", "unplaced"]
    assert out[0].reason == "least loaded" and out[2].fields == {"from": "h1"}


# --- the engine publishes --------------------------------------------------------------
def test_the_engines_pass_publishes_submitted_placed_and_rescheduled() -> None:
    fleet = Fleet()
    bus = Bus()
    fleet.engine.publish = bus.publish
    fleet.run()  # the term's first pass: what it compares with from here on
    fleet.store("a.service", SERVICE)
    fleet.run()
    events = bus.history.after(0).events
    assert [(e.kind, e.unit) for e in events] == [("submitted", "a.service"),
                                                  ("placed", "a.service")]
    first = fleet.where("a.service")
    assert events[1].machine == first and events[1].reason
    at_once(fleet.registry.update_machine(first, state="lost", error="silent"))
    fleet.run()
    moved = bus.history.after(2).events
    assert [e.kind for e in moved] == ["rescheduled"]
    assert moved[0].fields == {"from": first} and moved[0].machine != first


def test_a_follower_engine_publishes_nothing() -> None:
    fleet = Fleet()
    bus = Bus()
    fleet.engine.publish = bus.publish
    fleet.engine.leading = False
    fleet.run()
    fleet.store("a.service", SERVICE)
    fleet.run()
    assert bus.history.last == 0


# --- the API -----------------------------------------------------------------------------
def test_get_events_tail_after_and_a_long_poll(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        sock = s.config.socket
        assert post(sock, "/v1/units", {"units": [{"name": "a.service", "text": SERVICE}],
                                        "desired": "launched"})[0] == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, answer = http(sock, "GET", "/v1/events?unit=a.*")
            assert status == 200, answer
            if any(e["kind"] == "submitted" for e in answer["events"]):
                break
            time.sleep(0.05)
        assert [e["kind"] for e in answer["events"]][:1] == ["submitted"]
        last = answer["last"]
        got: List[Any] = []
        poll = threading.Thread(target=lambda: got.append(
            http(sock, "GET", f"/v1/events?after={last}&timeout=10")))
        poll.start()
        time.sleep(0.2)
        s.call(_publish(s, Draft("machine-lost", "silent for 9s", None, "h9")))
        poll.join(10)
        status, answer = got[0]
        assert status == 200 and [e["id"] for e in answer["events"]] == [last + 1]
        assert answer["events"][0]["reason"] == "silent for 9s"
        status, answer = http(sock, "GET", "/v1/events?after=-1")
        assert status == 400 and "after" in str(answer)


async def _publish(s: Any, d: Draft) -> None:
    s.daemon.events.publish(d)


def test_a_follower_refuses_the_event_stream_naming_the_leader(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        async def follow() -> None:  # as a deposed fleetd: another holds the lock
            s.daemon.epoch = None
            s.daemon.leadership.status = lambda: Status(  # type: ignore[method-assign]
                False, None, None, "fleetd-a")
        s.call(follow())
        status, answer = http(s.config.socket, "GET", "/v1/events?after=0&timeout=5")
        assert status == 503, answer
        assert "fleetd-a" in answer["error"] and answer["ready"] is False


# --- a machine session publishes what its agent reports ------------------------------------
def test_a_session_publishes_the_machine_and_its_units_reports(tmp_path: Path) -> None:
    from test_session_epoch import new_session

    from fleetd.testing.transport import FakeTransport
    from fleetd.testing.waiting import until

    def unit(state: str, pid: Any, restarts: int = 0, **kw: Any) -> Any:
        return protocol.unit_status("a.service", "x", state, pid=pid, started_at=None,
                                    exit_status=kw.get("exit_status"), restarts=restarts,
                                    error=kw.get("error"), generation=0, health="unknown")

    async def scenario() -> List[Any]:
        transport = FakeTransport()
        session, registry = new_session(tmp_path, transport)
        bus = Bus()
        session.publish = bus.publish
        session.start()
        try:
            await until(lambda: session.connected)
            say = transport.channel.say
            say("unit", unit=unit(protocol.RUNNING, 100))
            say("unit", unit=unit(protocol.STARTING, None, error="killed by signal 9"))
            say("unit", unit=unit(protocol.RUNNING, 101, restarts=1))
            await until(lambda: bus.history.last >= 4)
            transport.channel.close()
            await until(lambda: bus.history.last >= 5)
            return [(e.kind, e.unit, e.machine) for e in bus.history.after(0).events]
        finally:
            await session.stop()
            await registry.close()

    assert asyncio.run(scenario())[:5] == [
        ("machine-up", None, "h1"), ("started", "a.service", "h1"),
        ("exited", "a.service", "h1"), ("restarted", "a.service", "h1"),
        ("machine-unreachable", None, "h1")]
