"""``units('web@*.service')`` in templates (issue 18 §4): a unit renders from other
units' placements, is rendered again (to a new hash, so its machine is sent a new spec)
when what it read moves, and only then: never for its own move, an unrelated unit's, or
a pass that changes nothing (no loop of re-renders)."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Tuple

import pytest

from fleetd.engine.desired import Rendering
from fleetd.registry.base import LAUNCHED, LOADED, MachineRecord, UnitInput, UnitRecord
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units.compiled import CompiledUnits, Machine
from fleetd.units.model import content_hash
from fleetd.units.parser import UnitError
from fleetd.units.peers import Peer, Placements
from fleetd.units.render import MachineContext
from fleetd.units.validate import validate

LB = ("[Service]\nExecStart=/bin/echo {% for w in units('web@*.service') %}"
      "{{ w.instance }}={{ w.address }}:{{ w.port }} {% endfor %}\n")
WEB = "[Service]\nExecStart=/bin/sleep 100\n[X-Fleet]\nPorts=8080 53/udp\n"
OTHER = "[Service]\nExecStart=/bin/sleep 100\n"
H1 = Machine.of(MachineContext("h1", "10.0.0.1", "id1", {}, {}))


def line(units: CompiledUnits, placements: Placements, text: str = LB,
         name: str = "lb.service") -> Tuple[str, str]:
    unit, _ = units.rendered(name, content_hash(text), {}, H1, lambda h: text, placements)
    return unit.text.splitlines()[1], unit.hash


def peers(*where: Tuple[str, str]) -> Placements:
    return Placements([Peer(n, m, "10.0.0." + m[1:], (8080,) if n.startswith("web") else ())
                       for n, m in where])


def test_a_template_lists_its_peers_sorted_and_never_itself() -> None:
    shown, _ = line(CompiledUnits(), peers(("web@2.service", "h3"), ("web@1.service", "h2"),
                                           ("db.service", "h2")))
    assert shown == "ExecStart=/bin/echo 1=10.0.0.2:8080 2=10.0.0.3:8080 "
    me = "[Service]\nExecStart=/bin/echo {% for w in units('*') %}{{ w.name }} {% endfor %}\n"
    shown, _ = line(CompiledUnits(), peers(("lb.service", "h1"), ("db.service", "h2")), me)
    assert shown == "ExecStart=/bin/echo db.service "


def test_a_peer_shows_name_machine_address_and_ports() -> None:
    shown = Peer("web@1.service", "h2", "10.0.0.2", (8080, 53)).view()
    assert shown == {"name": "web@1.service", "instance": "1", "machine": "h2",
                     "address": "10.0.0.2", "port": 8080, "ports": [8080, 53]}
    assert Peer("db.service", "h2", "10.0.0.2").view()["port"] is None


def test_at_submit_no_peer_is_placed_and_a_bad_pattern_names_its_line() -> None:
    assert "ExecStart=/bin/echo \n" in validate("lb.service", LB, {}, "lb.service").text
    bad = "[Service]\nExecStart=/bin/echo\n{% for w in units(3) %}{% endfor %}\n"
    with pytest.raises(UnitError, match=r"lb.unit:3: template: units\(\) takes a glob"):
        validate("lb.service", bad, {}, "lb.unit")


def test_it_renders_again_only_when_what_it_read_changes() -> None:
    units = CompiledUnits()
    first = line(units, peers(("web@1.service", "h2"), ("db.service", "h2")))
    assert units.parses == 1
    # the same placements, its own move, an unrelated unit's move: the same unit, unread
    assert line(units, peers(("web@1.service", "h2"), ("db.service", "h2"))) == first
    assert line(units, peers(("web@1.service", "h2"), ("db.service", "h3"),
                             ("lb.service", "h2"))) == first
    assert units.parses == 1
    # a peer moves: rendered again, to a new hash
    moved = line(units, peers(("web@1.service", "h3"), ("db.service", "h2")))
    assert moved[0] == "ExecStart=/bin/echo 1=10.0.0.3:8080 " and moved[1] != first[1]
    assert units.parses == 2
    # back where it was: that render is still held (until the engine's retain)
    assert line(units, peers(("web@1.service", "h2"))) == first and units.parses == 2


# --- the engine's side: each pass renders from its own placements ----------------------

def machine(name: str) -> MachineRecord:
    return MachineRecord(name=name, address="10.0.0." + name[1:], port=22, user="root",
                         identity=None, known_hosts=None, agent_command="true",
                         metadata={}, state="up")


def record(name: str, text: str, where: str, desired: str = LAUNCHED) -> UnitRecord:
    return UnitRecord(name=name, hash=content_hash(text), desired=desired, machine=where,
                      reason="", updated_at=1.0)


def lb_spec(rendering: Rendering, units: List[UnitRecord]) -> Dict[str, Any]:
    for u in units:  # a pass probes every unit first (fleetd/engine/loop.py)
        rendering.units.probed(u.name, u.hash, u.vars, rendering.registry.unit_text)
    machines = [machine(f"h{i}") for i in (1, 2, 3)]
    sets, expected, _, _ = rendering.sets(units, machines, {}, set())
    spec = next(s for s in sets["h1"] if s["name"] == "lb.service")
    assert expected[("lb.service", "h1")] == spec["hash"]
    return spec


def words(spec: Dict[str, Any]) -> List[str]:
    return list(spec["config"]["commands"][0]["words"][1:])


def test_a_pass_sends_the_reader_a_new_spec_when_a_peer_moves(tmp_path: Any) -> None:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.put_units([UnitInput("lb.service", LB, content_hash(LB)),
                                UnitInput("web@1.service", WEB, content_hash(WEB)),
                                UnitInput("web@2.service", WEB, content_hash(WEB))], LAUNCHED))
    rendering = Rendering(registry, CompiledUnits(), None)
    units = [record("lb.service", LB, "h1"), record("web@1.service", WEB, "h2"),
             record("web@2.service", WEB, "h3")]
    before = lb_spec(rendering, units)
    assert words(before) == ["1=10.0.0.2:8080", "2=10.0.0.3:8080"]
    parses = rendering.units.parses
    assert lb_spec(rendering, units)["hash"] == before["hash"]  # nothing moved: no render
    assert rendering.units.parses == parses
    lost = [units[0], dataclasses.replace(units[1], machine="h1"), units[2]]
    after = lb_spec(rendering, lost)
    assert after["hash"] != before["hash"]
    assert words(after) == ["1=10.0.0.1:8080", "2=10.0.0.3:8080"]
    assert rendering.hash_on(lost[0], machine("h1")) == after["hash"]  # until the next pass
    # a peer that is not to run is no longer served
    stopped = [units[0], units[1], dataclasses.replace(units[2], desired=LOADED)]
    assert words(lb_spec(rendering, stopped)) == ["1=10.0.0.2:8080"]
