"""The engine loop: wake on events, reconcile, apply placements, hand out desired sets.

All decisions are the pure reconciler's; this layer only reads the registry, writes the
placements it planned and gives every machine session its host's desired set (the
session sends it only if it changed). Wakes coalesce: a burst of submits costs one pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Dict, List, Mapping, Tuple

from fleetd import protocol
from fleetd.engine import reconciler
from fleetd.registry.base import LAUNCHED, LOADED, Registry, UnitRecord
from fleetd.units.model import Unit, load

log = logging.getLogger("fleetd.engine")

PushFn = Callable[[str, List[Dict[str, Any]]], None]


class Engine:
    def __init__(self, registry: Registry, push: PushFn, changed: Callable[[], None]) -> None:
        self.registry = registry
        self.push = push
        self.changed = changed
        self._wake = asyncio.Event()
        self._units: Dict[Tuple[str, str], Unit] = {}  # (name, hash) -> parsed, validated

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
        units = self.registry.list_units()
        machines = self.registry.list_machines()
        tasks = reconciler.plan(units, machines)
        if tasks:
            for t in tasks:
                log.info("%s -> %s: %s", t.unit, t.machine or "(unplaced)", t.reason)
            self.registry.set_placements((t.unit, t.machine, t.reason) for t in tasks)
            units = self.registry.list_units()
            self.changed()
        sets = self.desired_sets(units, [m.name for m in machines])
        for machine, specs in sets.items():
            self.push(machine, specs)

    def desired_sets(
        self, units: List[UnitRecord], machines: List[str]
    ) -> Mapping[str, List[Dict[str, Any]]]:
        sets: Dict[str, List[Dict[str, Any]]] = {m: [] for m in machines}
        live = set()
        for u in units:
            if u.machine not in sets or u.desired not in (LOADED, LAUNCHED):
                continue
            want = protocol.WANT_RUNNING if u.desired == LAUNCHED else protocol.WANT_STOPPED
            sets[u.machine].append(self._unit(u).spec(want))
            live.add((u.name, u.hash))
        for key in set(self._units) - live:
            del self._units[key]
        return sets

    def _unit(self, record: UnitRecord) -> Unit:
        key = (record.name, record.hash)
        unit = self._units.get(key)
        if unit is None:
            text = self.registry.unit_text(record.hash)
            if text is None:
                raise LookupError(f"content {record.hash} of {record.name} is missing")
            unit = load(record.name, text)
            self._units[key] = unit
        return unit
