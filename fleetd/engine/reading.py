"""Reading a pass's records into the reconciler's facts: each unit's view (its
requirements, failures, readiness, whether a rollout renews it), the failures agents'
reports add, and the reconciler run itself with the units that break it set aside.

Part of the engine's pass (fleetd.engine.loop decides and writes): this side only
reads. Requirements come from each unit as it reads before any machine is chosen
(render.probe), through the cache shared with the API (fleetd.units.compiled); what a
unit runs as on a machine is fleetd.engine.desired's. One unit never stops the fleet: a
unit whose content cannot be read, or that breaks the reconciler alone, waits unplaced
with its reason while every other unit is placed as usual."""

from __future__ import annotations

import logging
from typing import Dict, List, Mapping, Optional, Tuple

from fleetd import protocol
from fleetd.engine import reconciler, rollout
from fleetd.engine.desired import Rendering
from fleetd.engine.facts import PlacementRow, failed_here
from fleetd.engine.views import Failure, MachineView, UnitView
from fleetd.registry.base import (
    LAUNCHED,
    FailureRecord,
    MachineRecord,
    ObservedRecord,
    Registry,
    UnitRecord,
)
from fleetd.units.compiled import CompiledUnits, ContentKey, Invalid
from fleetd.units.compiled import error_text as _error
from fleetd.units.xfleet import Requirements

log = logging.getLogger("fleetd.engine")

Observed = Mapping[Tuple[str, str], ObservedRecord]


class Reading:
    """The reading side of one engine's passes."""

    def __init__(self, registry: Registry, units: CompiledUnits, rendering: Rendering
                 ) -> None:
        self.registry = registry
        self.units = units
        self.rendering = rendering
        # units whose content broke a pass, and why: they wait unplaced until their
        # content or variables change
        self.set_aside: Dict[ContentKey, str] = {}

    def reconcile(self, views: List[UnitView], machines: List[MachineView], now: float,
                  keys: Mapping[str, ContentKey]) -> Optional[reconciler.Outcome]:
        """The reconciler's outcome; None if it failed and the units that make it fail
        were found and set aside (``set_aside``), so that the pass can run without them.

        The reconciler sees all units at once, so an error there names no unit: each is
        tried alone, and those that fail alone are the ones to blame. If none does (an
        interplay of several), the error goes up and the pass fails as before."""
        try:
            return reconciler.reconcile(views, machines, now)
        except Exception:  # the error is a unit's, found below
            culprits = {v.name: why for v in views
                        if (why := self._breaks(v, machines, now)) is not None}
            if not culprits:
                raise
            log.exception("engine pass failed for %s; setting it aside", " ".join(culprits))
        for name, why in culprits.items():
            self.set_aside[keys[name]] = f"cannot be scheduled: {why}"
        return None

    @staticmethod
    def _breaks(view: UnitView, machines: List[MachineView], now: float) -> Optional[str]:
        """Why the reconciler fails for this unit alone, or None if it does not."""
        try:
            reconciler.reconcile([view], machines, now)
        except Exception as exc:  # any error here is this unit's alone
            log.warning("%s breaks the engine pass: %s", view.name, _error(exc))
            return f"fleetd failed on it ({_error(exc)})"
        return None

    def new_failures(self, units: List[UnitRecord], machines: List[MachineRecord],
                     observed: Observed, recorded: Mapping[str, List[FailureRecord]],
                     now: float) -> List[FailureRecord]:
        """A unit reported failed where it is placed, for the content and generation
        fleetd wants there, since it was placed there: one failure, recorded once."""
        by_name = {m.name: m for m in machines}
        new = []
        for u in units:
            if u.desired != LAUNCHED or u.machine is None or u.machine not in by_name:
                continue
            o = observed.get((u.name, u.machine))
            if o is None or o.state != protocol.FAILED or o.generation != u.generation:
                continue
            if o.hash != self.rendering.hash_on(u, by_name[u.machine]):
                continue
            if failed_here(u, recorded.get(u.name, ())) is not None:
                continue  # this placement's failure is on record already
            why = o.error or f"exit status {o.exit_status}"
            new.append(FailureRecord(u.name, u.hash, u.machine, now, why))
        return new

    def views(self, units: List[UnitRecord], keys: Mapping[str, ContentKey],
              machines: List[MachineRecord], observed: Observed,
              failures: Mapping[str, List[FailureRecord]]
              ) -> Tuple[List[UnitView], List[PlacementRow], Dict[ContentKey, Requirements]]:
        """What the scheduler needs of each readable unit; the unreadable ones, unplaced
        with their reason; and every readable unit's requirements. Requirements come
        from the unit as it reads before any machine is chosen (render.probe), so
        [X-Fleet] never depends on the machine it would pick."""
        by_name = {m.name: m for m in machines}
        for stale in set(self.set_aside) - set(keys.values()):
            del self.set_aside[stale]
        views = []
        unreadable: List[PlacementRow] = []
        requirements: Dict[ContentKey, Requirements] = {}
        readable: List[UnitRecord] = []
        for u in units:
            key = keys[u.name]
            why = self.set_aside.get(key)
            if why is None:
                probed = self.units.probed(u.name, u.hash, u.vars, self.registry.unit_text,
                                           key)
                if isinstance(probed, Invalid):
                    why = probed.why
                else:
                    requirements[key] = probed.requirements
            if why is not None:
                if u.machine is not None or u.reason != why:
                    unreadable.append((u.name, None, why))
                continue
            readable.append(u)
        # [Unit] dependencies (engine/dependencies.py) ask whether the units that others
        # start after are ready, and whether the units that start after others run already
        ordered = {n for r in requirements.values() for n in (*r.deps.after, *r.deps.before)}
        ordered |= {u.name for u in readable
                    if requirements[keys[u.name]].deps.after
                    or requirements[keys[u.name]].deps.before}
        for u in readable:
            key = keys[u.name]
            mine = tuple(Failure(f.machine, f.at, f.reason) for f in failures.get(u.name, ())
                         if f.hash == u.hash)
            here = failed_here(u, failures.get(u.name, ()))
            machine = by_name.get(u.machine or "")
            o = observed.get((u.name, machine.name)) if machine is not None else None
            ready = (bool(u.handoff) or u.name in ordered) and machine is not None \
                and self.rendering.ready(u, machine, o)
            running = (u.name in ordered and o is not None and o.state == protocol.RUNNING
                       and o.generation == u.generation)
            views.append(UnitView(u.name, u.desired, u.machine, u.reason, requirements[key],
                                  mine, Failure(here.machine, here.at, here.reason)
                                  if here else None, u.handoff, ready, running,
                                  old_running=(u.name, u.handoff or "") in observed,
                                  renew=self.renewing(u, machine, observed)))
        return views, unreadable, requirements

    def renewing(self, u: UnitRecord, machine: Optional[MachineRecord], observed: Observed
                 ) -> bool:
        """Did a rollout give ``u`` new content while its old copy runs where it is
        placed (so that the reconciler may start the new one elsewhere first)?"""
        if u.handoff is not None or u.desired != LAUNCHED or machine is None:
            return False
        o = observed.get((u.name, machine.name))
        if o is None or o.state != protocol.RUNNING or o.hash == self.rendering.hash_on(u, machine):
            return False
        versions = self.registry.list_versions(u.name)
        return (len(versions) > 1 and versions[-1].hash == u.hash
                and versions[-1].via.startswith(rollout.CHANGE_VIA))
