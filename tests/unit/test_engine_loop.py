"""The engine loop on MemoryRegistry and FakeClock: no root, no lab, no SQLite file.

A pass reads the registry, decides (``Engine.decide``), writes, publishes a frozen
snapshot and pushes each machine's desired set; these tests drive passes by hand and
look at what was written, pushed and published.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Dict, List, Optional

import pytest

from fleetd import protocol
from fleetd.daemon.changes import Changes
from fleetd.daemon.service.errors import Invalid
from fleetd.daemon.service.placement import EngineView
from fleetd.daemon.service.units import Units
from fleetd.engine.loop import Engine
from fleetd.engine.snapshot import Snapshot
from fleetd.registry.base import LAUNCHED, MachineRecord, ObservedRecord, UnitInput
from fleetd.testing.clock import FakeClock
from fleetd.testing.registry import MemoryRegistry, at_once
from fleetd.units.compiled import CompiledUnits
from fleetd.units.model import content_hash
from fleetd.units.parser import UnitError

SERVICE = "[Service]\nExecStart=/bin/sleep 1000\n"
TEMPLATED = SERVICE + "Environment=HOST={{ machine.name }}\n"
BAD = SERVICE + "CPUQuota=nan%\n"
Pushed = Dict[str, List[Dict[str, Any]]]


class Fleet:
    """A registry with machines h1 and h2 up, an engine on it, and what it pushed."""

    def __init__(self, machines: int = 2) -> None:
        self.clock = FakeClock()
        self.registry = MemoryRegistry(clock=self.clock)
        self.pushed: Pushed = {}
        self.changes = 0
        self.units = CompiledUnits()
        for i in range(1, machines + 1):
            at_once(self.registry.add_machine(MachineRecord(
                name=f"h{i}", address=f"10.0.0.{i}", port=22, user="root", identity=None,
                known_hosts=None, agent_command="fleet-agent", metadata={"n": str(i)})))
            at_once(self.registry.update_machine(f"h{i}", state="up", machine_id=f"{i:032x}",
                                         facts={"cpus": 4, "memory_bytes": 1 << 33}))
        self.engine = Engine(self.registry, self.pushed.__setitem__, self.changed,
                             units=self.units)

    def changed(self) -> None:
        self.changes += 1

    def store(self, name: str, text: str, **variables: str) -> None:
        at_once(self.registry.put_units([UnitInput(name, text, content_hash(text), variables)],
                                LAUNCHED))

    def run(self) -> None:
        """One pass at the clock's time, inside an event loop (a pass may set a timer)."""
        async def one() -> None:
            await self.engine.reconcile_once(now=self.clock.now)
        asyncio.run(one())

    def where(self, name: str) -> Any:
        u = self.registry.get_unit(name)
        assert u is not None
        return u.machine

    def report(self, name: str, state: str, **kw: Any) -> None:
        """The agent of the unit's machine reports it, for the content it was handed."""
        u = self.registry.get_unit(name)
        assert u is not None and u.machine is not None
        at_once(self.registry.upsert_observed(ObservedRecord(
            unit=name, machine=u.machine, hash=self.engine.snapshot().hashes[(name, u.machine)],
            state=state, pid=None, started_at=None, exit_status=kw.get("exit_status"),
            restarts=0, error=kw.get("error"), updated_at=self.clock.now,
            generation=u.generation)))


def test_a_pass_places_writes_pushes_and_publishes_a_snapshot() -> None:
    f = Fleet()
    f.store("a.service", SERVICE)
    f.store("b.service", SERVICE)
    f.run()
    assert {f.where("a.service"), f.where("b.service")} == {"h1", "h2"}  # spread by load
    pushed = {m: [s["name"] for s in specs] for m, specs in f.pushed.items()}
    assert sorted(pushed["h1"] + pushed["h2"]) == ["a.service", "b.service"]
    snap = f.engine.snapshot()
    assert isinstance(snap, Snapshot) and snap.at == f.clock.now
    a = f.where("a.service")
    assert snap.expected()[("a.service", a)] == f.pushed[a][0]["hash"]
    assert snap.targets(f.registry.get_unit("a.service")) == [a]  # type: ignore[arg-type]
    assert f.changes == 1
    # the snapshot is the one way to read what the engine decided
    assert not any(hasattr(f.engine, old) for old in
                   ("expected", "global_targets", "watching", "requirements_of"))


def test_the_snapshot_is_immutable_and_a_pass_replaces_it() -> None:
    f = Fleet()
    f.store("a.service", SERVICE)
    f.run()
    first = f.engine.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.at = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.hashes[("a.service", "h9")] = "x"  # type: ignore[index]
    f.store("b.service", SERVICE)
    f.clock.advance(1)
    f.run()
    assert ("b.service", f.where("b.service")) not in first.hashes  # a reader's copy stays
    assert ("b.service", f.where("b.service")) in f.engine.snapshot().hashes


def test_a_unit_file_is_parsed_once_per_content_and_machine() -> None:
    f = Fleet()
    f.store("plain.service", SERVICE)
    f.store("web.service", TEMPLATED)
    f.store("g.service", TEMPLATED + "[X-Fleet]\nGlobal=true\n")
    for _ in range(3):
        f.run()
        f.clock.advance(1)
    # probed: 3 units; rendered: plain once, web once (its machine), g once per machine
    assert f.units.parses == 3 + 1 + 1 + 2
    g = f.registry.get_unit("g.service")
    assert g is not None and f.engine.snapshot().requirements_of(g) is not None
    assert f.engine.snapshot().global_targets()["g.service"] == ("h1", "h2")
    envs = {m: [s["config"].get("environment") for s in specs if s["name"] == "g.service"]
            for m, specs in f.pushed.items()}
    assert envs == {"h1": [{"HOST": "h1"}], "h2": [{"HOST": "h2"}]}


def test_an_unreadable_unit_waits_with_its_reason_and_is_read_once() -> None:
    f = Fleet()
    f.store("bad.service", BAD)
    f.store("good.service", SERVICE)
    f.run()
    f.run()
    bad = f.registry.get_unit("bad.service")
    assert bad is not None and bad.machine is None and bad.reason.startswith("invalid: ")
    assert f.engine.snapshot().requirements_of(bad) is None
    assert f.units.parses == 2 + 1  # both probed once, good rendered once
    assert f.where("good.service") is not None


def test_a_failure_is_recorded_once_and_the_unit_moves_after_its_delay() -> None:
    f = Fleet()
    f.store("a.service", SERVICE)
    f.run()
    first = f.where("a.service")
    f.report("a.service", protocol.FAILED, error="start limit hit")
    f.clock.advance(1)
    f.run()
    f.run()
    assert len(f.registry.list_failures()["a.service"]) == 1
    u = f.registry.get_unit("a.service")
    assert u is not None and u.machine == first
    assert u.reason.endswith("reschedule attempt 1 of 5 in 5s")
    f.clock.advance(5)
    f.run()
    u = f.registry.get_unit("a.service")
    assert u is not None and u.machine not in (None, first)
    assert u.reason.startswith(f"failed on {first}: start limit hit (reschedule attempt 1 of 5)")
    assert [s["name"] for s in f.pushed[u.machine]] == ["a.service"]
    assert f.pushed[first] == []


def test_decide_writes_nothing() -> None:
    f = Fleet()
    f.store("a.service", SERVICE)
    r = f.registry
    units, machines = r.list_units(), r.list_machines()
    d = f.engine.decide(units, machines, {}, {}, f.clock.now)
    assert [t.unit for t in d.tasks] == ["a.service"] and d.sets and d.wake_at is None
    assert r.list_units() == units and f.pushed == {} and f.engine.snapshot().at is None
    placed = next(u for u in d.units if u.name == "a.service")
    assert placed.machine == d.tasks[0].machine  # as the registry holds it once written


def test_what_submit_checked_the_engine_does_not_read_again() -> None:
    f = Fleet()
    with pytest.raises(UnitError, match=r"^/home/me/bad.service:3: "):
        f.units.check("bad.service", content_hash(BAD), {}, BAD, "/home/me/bad.service")
    unit = f.units.check("a.service", content_hash(SERVICE), {}, SERVICE, "/home/me/a.service")
    assert unit.file.source == "a.service"
    f.store("a.service", SERVICE)
    f.run()
    assert f.units.parses == 2 + 1  # two checks, one render; no probe in the pass
    assert f.where("a.service") is not None


def test_a_unit_submitted_through_the_api_is_not_read_again_by_the_engine() -> None:
    f = Fleet()
    api = Units(f.registry, EngineView(f.engine), Changes(), lambda: None, {}, f.units)

    def submit(*items: Dict[str, Any], desired: Optional[str] = LAUNCHED) -> None:
        async def go() -> None:
            await api.store(await api.resolve(list(items), desired), desired, replace=False)
        asyncio.run(go())

    with pytest.raises(Invalid) as refused:  # the user's file and line, nothing stored
        submit({"name": "bad.service", "text": BAD, "source": "/home/me/bad.service"})
    assert refused.value.details["errors"][0].startswith("/home/me/bad.service:3: ")
    assert f.registry.list_units() == []
    described = "[Unit]\nDescription=unit %n\n" + SERVICE
    submit({"name": "a.service", "text": described, "source": "/home/me/a.service"},
           {"name": "web.service", "text": TEMPLATED})
    assert f.units.parses == 1 + 2  # the refusal, then both units checked once
    f.run()
    f.run()
    assert f.units.parses == 3 + 2  # each rendered for its machine once; probed never
    assert f.where("a.service") is not None and f.where("web.service") is not None
    # the API reads the same cache: a unit's description and check cost no parse
    status = asyncio.run(api.status("a.service", 0))
    assert status["description"] == "unit a.service"
    where = f.where("a.service")
    assert api.verdict("a.service", "healthy") == (
        None, f"placed on {where}, not reported there yet")
    assert f.units.parses == 5
