"""The engine's side of OnPeersChange= (fleetd.engine.desired, fleetd.units.compiled):
a unit that reads other units' placements gets a ``base`` that stays the same while only
they move (its hash changes), and ``reload`` when it says OnPeersChange=reload."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

from fleetd.engine.desired import Rendering
from fleetd.registry.base import LAUNCHED, MachineRecord, UnitInput, UnitRecord
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units.compiled import CompiledUnits
from fleetd.units.model import content_hash

LB = ("[Service]\nExecStart=/bin/echo {% for w in units('web@*.service') %}"
      "{{ w.address }} {% endfor %}\nExecReload=/bin/true\n")
WEB = "[Service]\nExecStart=/bin/sleep 100\n"


def machine(name: str) -> MachineRecord:
    return MachineRecord(name=name, address="10.0.0." + name[1:], port=22, user="root",
                         identity=None, known_hosts=None, agent_command="true",
                         metadata={}, state="up")


def record(name: str, text: str, where: str) -> UnitRecord:
    return UnitRecord(name=name, hash=content_hash(text), desired=LAUNCHED, machine=where,
                      reason="", updated_at=1.0)


def specs(tmp_path: Any, lb: str, web_on: List[str]) -> List[Dict[str, Any]]:
    """lb's spec on h1 while web@1 is on each machine of ``web_on`` in turn."""
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.put_units([UnitInput("lb.service", lb, content_hash(lb)),
                                UnitInput("web@1.service", WEB, content_hash(WEB)),
                                UnitInput("other.service", WEB, content_hash(WEB))],
                               LAUNCHED))
    rendering = Rendering(registry, CompiledUnits(), None)
    units = [record("lb.service", lb, "h1"), record("web@1.service", WEB, "h2"),
             record("other.service", WEB, "h2")]
    machines = [machine(f"h{i}") for i in (1, 2, 3)]
    out = []
    for where in web_on:
        now = [units[0], dataclasses.replace(units[1], machine=where), units[2]]
        for u in now:
            rendering.units.probed(u.name, u.hash, u.vars, registry.unit_text)
        sets, _, _, _ = rendering.sets(now, machines, {}, set())
        out.append(dict(next(s for s in sets["h1"] if s["name"] == "lb.service")))
        other = next(s for s in sets["h2"] if s["name"] == "other.service")
        assert "base" not in other and "reload" not in other  # it reads no placements
    return out


def test_a_reader_keeps_its_base_while_its_peers_move(tmp_path: Any) -> None:
    before, after = specs(tmp_path, LB + "[X-Fleet]\nOnPeersChange=reload\n",
                          ["h2", "h3"])
    assert before["hash"] != after["hash"]
    assert before["base"] == after["base"] and len(before["base"]) == 64
    assert before["reload"] is True and after["reload"] is True


def test_restart_the_default_sends_a_base_but_no_reload(tmp_path: Any) -> None:
    before, after = specs(tmp_path, LB, ["h2", "h3"])
    assert before["base"] == after["base"] and before["hash"] != after["hash"]
    assert "reload" not in before and "reload" not in after


def test_new_content_is_a_new_base(tmp_path: Any) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reloads = LB + "[X-Fleet]\nOnPeersChange=reload\n"
    one, = specs(tmp_path / "a", reloads, ["h2"])
    two, = specs(tmp_path / "b", reloads + "# another version\n", ["h2"])
    assert one["base"] != two["base"]
