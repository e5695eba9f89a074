"""The engine loop: wake on events, reconcile, apply placements, hand out desired sets.

All decisions are the pure reconciler's; this layer only reads the registry, writes the
placements it planned and gives every machine session its host's desired set (the
session sends it only if it changed). Wakes coalesce: a burst of submits costs one pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from fleetd import protocol
from fleetd.engine import reconciler
from fleetd.engine.scheduler import global_placements
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import LAUNCHED, LOADED, MachineRecord, Registry, UnitRecord
from fleetd.units import render
from fleetd.units.model import Unit, load, parse_name
from fleetd.units.parser import UnitError
from fleetd.units.validate import validate
from fleetd.units.xfleet import Requirements

log = logging.getLogger("fleetd.engine")

PushFn = Callable[[str, List[Dict[str, Any]]], None]
CacheKey = Tuple[str, str, str, str]  # name, content hash, vars, machine (rendered units)


class Engine:
    def __init__(self, registry: Registry, push: PushFn, changed: Callable[[], None]) -> None:
        self.registry = registry
        self.push = push
        self.changed = changed
        self._wake = asyncio.Event()
        self._units: Dict[CacheKey, Unit] = {}  # parsed, validated, rendered
        # (unit, machine) -> hash of the rendered content last handed to that machine:
        # what "current" means for an agent's report
        self.expected: Dict[Tuple[str, str], str] = {}
        self.global_targets: Dict[str, List[str]] = {}  # Global unit -> its machines
        self._requirements: Dict[Tuple[str, str, str], Requirements] = {}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("engine pass failed; retrying on the next event")

    def reconcile_once(self) -> None:
        units = [u for u in self.registry.list_units() if "@." not in u.name]  # no templates
        machines = self.registry.list_machines()
        machine_views = [machine_view(m) for m in machines]
        unit_views = self._unit_views(units)
        tasks = reconciler.plan(unit_views, machine_views)
        if tasks:
            for t in tasks:
                log.info("%s -> %s: %s", t.unit, t.machine or "(unplaced)", t.reason)
            self.registry.set_placements((t.unit, t.machine, t.reason) for t in tasks)
            units = [u for u in self.registry.list_units() if "@." not in u.name]
            unit_views = self._unit_views(units)
            self.changed()
        self.global_targets = global_placements(unit_views, machine_views)
        sets = self.desired_sets(units, machines)
        for machine, specs in sets.items():
            self.push(machine, specs)

    def _unit_views(self, units: List[UnitRecord]) -> List[UnitView]:
        """What the scheduler needs of each unit; requirements come from the unit as it
        reads before any machine is chosen (render.probe), so [X-Fleet] never depends
        on the machine it would pick."""
        views = []
        keys = {(u.name, u.hash, _vars_key(u)) for u in units}
        for stale in set(self._requirements) - keys:
            del self._requirements[stale]
        invalid: List[Tuple[str, Optional[str], str]] = []
        for u in units:
            key = (u.name, u.hash, _vars_key(u))
            req = self._requirements.get(key)
            if req is None:
                text = self.registry.unit_text(u.hash) or ""
                try:
                    req = validate(u.name, text, u.vars, u.name).requirements
                except UnitError as exc:
                    # stored before a rule tightened: unplace it, and say exactly why
                    why = f"invalid: {exc}"
                    if u.machine is not None or u.reason != why:
                        invalid.append((u.name, None, why))
                    continue
                self._requirements[key] = req
            views.append(UnitView(u.name, u.desired, u.machine, u.reason, req))
        if invalid:
            self.registry.set_placements(invalid)
        return views

    def desired_sets(
        self, units: List[UnitRecord], machines: List[MachineRecord]
    ) -> Mapping[str, List[Dict[str, Any]]]:
        """Each machine's units, rendered for that machine. A unit that cannot be rendered
        there is left out, and its reason says why."""
        by_name = {m.name: m for m in machines}
        sets: Dict[str, List[Dict[str, Any]]] = {m.name: [] for m in machines}
        live = set()
        expected: Dict[Tuple[str, str], str] = {}
        reasons: List[Tuple[str, Optional[str], str]] = []
        for u in units:
            if u.desired not in (LOADED, LAUNCHED):
                continue
            targets = self.global_targets.get(u.name, [u.machine] if u.machine else [])
            want = protocol.WANT_RUNNING if u.desired == LAUNCHED else protocol.WANT_STOPPED
            for target in targets:
                machine = by_name.get(target)
                if machine is None:
                    continue
                try:
                    unit, key = self._rendered(u, machine)
                except UnitError as exc:
                    why = f"cannot render for {machine.name}: {exc}"
                    if u.reason != why:
                        reasons.append((u.name, u.machine, why))
                    continue
                live.add(key)
                expected[(u.name, machine.name)] = unit.hash
                sets[machine.name].append(unit.spec(want, u.generation))
        moved = expected != self.expected
        self.expected = expected
        if reasons:
            self.registry.set_placements(reasons)
        if reasons or moved:
            self.changed()  # waiters compare reports against the new expectations
        for key in set(self._units) - live:
            del self._units[key]
        return sets

    def _rendered(self, record: UnitRecord, machine: MachineRecord) -> Tuple[Unit, CacheKey]:
        """The unit as it runs on ``machine`` (parsed once per content, vars and machine)."""
        text = self.registry.unit_text(record.hash)
        if text is None:
            raise LookupError(f"content {record.hash} of {record.name} is missing")
        if not render.has_markup(text):
            key: CacheKey = (record.name, record.hash, "", "")
        else:
            key = (record.name, record.hash, json.dumps(record.vars, sort_keys=True),
                   json.dumps([machine.name, machine.address, machine.machine_id,
                               machine.metadata, machine.facts], sort_keys=True))
        unit = self._units.get(key)
        if unit is None:
            if key[3]:
                uname = parse_name(record.name)
                text = render.for_machine(
                    text, record.name, uname.prefix, uname.instance, record.vars,
                    render.MachineContext(machine.name, machine.address,
                                          machine.machine_id or "", machine.metadata,
                                          machine.facts))
            unit = load(record.name, text)
            self._units[key] = unit
        return unit, key


def _vars_key(u: UnitRecord) -> str:
    return json.dumps(u.vars, sort_keys=True)


def machine_view(m: MachineRecord) -> MachineView:
    """A machine as the scheduler sees it: capacity and capabilities from its facts."""
    facts = m.facts or {}
    return MachineView(
        name=m.name, machine_id=m.machine_id, up=m.state == "up", metadata=m.metadata,
        cpus=float(facts.get("cpus") or 0), memory_bytes=int(facts.get("memory_bytes") or 0),
        capabilities=frozenset(str(c) for c in facts.get("capabilities") or ()),
        lost=(m.error or "silent past its TTL") if m.state == "lost" else None,
    )
