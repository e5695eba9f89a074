"""What each machine is to run, rendered for that machine: the engine's desired sets,
and the questions a pass asks of one unit on one machine (what would it run as there,
does it run there as fleetd wants).

Kept apart from the loop (fleetd.engine.loop), which reads, decides and writes: this is
the rendering side of a pass. Unit files are read through one cache
(fleetd.units.compiled), shared with the API: each (name, content, variables) is probed
once and rendered once per machine; each machine's template context is built once per
machine record.

One unit never stops the fleet: an error in rendering a unit's content stays with that
unit (its reason: "cannot render for m1: ..."), which is left out of that machine's set,
while every other unit goes out as usual."""

from __future__ import annotations

import dataclasses
import logging
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from fleetd import protocol
from fleetd.engine.facts import PlacementRow, machine_context
from fleetd.engine.handoff import RENEWED
from fleetd.registry.base import (
    LAUNCHED,
    LOADED,
    MachineRecord,
    ObservedRecord,
    Registry,
    UnitRecord,
)
from fleetd.units.compiled import CompiledUnits, Machine, RenderKey, peers_base
from fleetd.units.compiled import error_text as _error
from fleetd.units.model import Unit
from fleetd.units.parser import UnitError
from fleetd.units.peers import NOWHERE, Peer, Placements
from fleetd.units.secrets import Sealed, SecretSource, seal
from fleetd.wire.unitspec import UnitSpec

log = logging.getLogger("fleetd.engine")

Sets = Dict[str, List[UnitSpec]]  # machine -> its desired set
Expected = Dict[Tuple[str, str], str]  # (unit, machine) -> the hash it runs as there


class Rendering:
    """Units rendered for machines, for one engine. ``secrets``: where
    SecretEnvironment= values come from (units/secrets.py)."""

    def __init__(self, registry: Registry, units: CompiledUnits,
                 secrets: Optional[SecretSource]) -> None:
        self.registry = registry
        self.units = units
        self.secrets = secrets
        self._machines: Dict[str, Tuple[MachineRecord, Machine]] = {}
        # where units are, for templates that ask (units(), fleetd.units.peers): set by
        # each pass's ``sets``, and read until the next, so that a unit's hash between
        # passes is the one its machine was sent
        self.placements = NOWHERE

    def new_pass(self) -> None:
        """Forget the machines' contexts: a pass builds them from its own records."""
        self._machines = {}

    def render(self, u: UnitRecord, machine: MachineRecord
               ) -> Union[Tuple[Unit, RenderKey], str]:
        """The unit as it runs on ``machine``, or why it cannot: an error in one unit's
        content stays with that unit (its reason), never with the pass."""
        known = self._machines.get(machine.name)
        if known is None or known[0] is not machine:
            known = self._machines[machine.name] = (machine,
                                                    Machine.of(machine_context(machine)))
        try:
            return self.units.rendered(u.name, u.hash, u.vars, known[1],
                                       self.registry.unit_text, self.placements)
        except (UnitError, LookupError) as exc:
            return str(exc)
        except Exception as exc:  # one unit's content never stops a pass
            log.exception("%s: rendering it for %s failed", u.name, machine.name)
            return f"fleetd failed on it ({_error(exc)})"

    def seal(self, unit: Unit) -> Union[Sealed, str]:
        """The spec's hash and its secret values (a unit without SecretEnvironment=:
        its own hash and none), or why the unit cannot run (a secret not set)."""
        return seal(unit.hash, unit.config.get("secret_environment") or {}, self.secrets)

    def hash_on(self, u: UnitRecord, machine: MachineRecord) -> Optional[str]:
        """What ``u``'s content, as stored now, runs as on ``machine``. Not the last
        snapshot's: a unit whose content changed since (a rollout's step) would have its
        old copy's reports (failed, running) taken for the new content's."""
        rendered = self.render(u, machine)
        sealed = None if isinstance(rendered, str) else self.seal(rendered[0])
        return None if sealed is None or isinstance(sealed, str) else sealed[0]

    def ready(self, u: UnitRecord, machine: MachineRecord, o: Optional[ObservedRecord]
              ) -> bool:
        """Does ``u`` run on ``machine`` as fleetd wants it, healthy if it is checked?"""
        if o is None or o.generation != u.generation or o.hash != self.hash_on(u, machine):
            return False
        if u.desired == LOADED:
            return o.state == protocol.STOPPED
        if o.state == protocol.EXITED:
            return True
        if o.state != protocol.RUNNING or o.health == "failing":
            return False
        rendered = self.render(u, machine)
        if isinstance(rendered, str):
            return False
        return o.health == "passing" or not rendered[0].config.get("check")

    def old_copy(self, u: UnitRecord) -> UnitRecord:
        """The unit as its hand-off's old copy runs: a rollout's keeps the content it
        had (its previous version); a drain's has the same content as the new copy."""
        if not u.reason.startswith(RENEWED.split("{", 1)[0]):
            return u
        versions = self.registry.list_versions(u.name)
        if len(versions) < 2 or versions[-1].hash != u.hash:
            return u
        return dataclasses.replace(u, hash=versions[-2].hash)

    def peers(self, units: List[UnitRecord], machines: Mapping[str, MachineRecord],
              globals: Mapping[str, Sequence[str]]) -> Placements:
        """Every unit desired running, on each machine it is placed on (a Global unit's
        every machine), with that machine's address and the ports it declares."""
        found: List[Peer] = []
        for u in units:
            if u.desired != LAUNCHED:
                continue
            probed = self.units.known(u.name, u.hash, u.vars)
            ports = tuple(p.number for p in probed.requirements.ports) \
                if isinstance(probed, Unit) else ()
            for target in globals.get(u.name, [u.machine] if u.machine else []):
                machine = machines.get(target)
                if machine is not None:
                    found.append(Peer(u.name, target, machine.address, ports))
        return Placements(found)

    def sets(self, units: List[UnitRecord], machines: List[MachineRecord],
             globals: Mapping[str, Sequence[str]], handed_over: Set[str],
             held: Optional[Mapping[Tuple[str, str], str]] = None
             ) -> Tuple[Sets, Expected, List[PlacementRow], Set[RenderKey]]:
        """Each machine's units, rendered for that machine; what each (unit, machine)
        is expected to run; why a unit cannot be rendered where it is placed (it is left
        out of that set); and the rendered units the sets use. ``held``: (Global unit,
        machine) -> the content it keeps there while its rollout has not reached that
        machine (engine/rolling.py)."""
        by_name = {m.name: m for m in machines}
        self.placements = self.peers(units, by_name, globals)
        sets: Sets = {m.name: [] for m in machines}
        live: Set[RenderKey] = set()
        expected: Expected = {}
        reasons: List[PlacementRow] = []
        for u in units:
            if u.desired not in (LOADED, LAUNCHED):
                continue
            targets = globals.get(u.name, [u.machine] if u.machine else [])
            if u.handoff and u.handoff != u.machine and u.name not in handed_over:
                targets = [*targets, u.handoff]  # the old copy runs until the new is ready
            want = protocol.WANT_RUNNING if u.desired == LAUNCHED else protocol.WANT_STOPPED
            for target in targets:
                machine = by_name.get(target)
                if machine is None:
                    continue
                kept = (held or {}).get((u.name, target))
                rendered = self.render(self.old_copy(u) if target == u.handoff else
                                       dataclasses.replace(u, hash=kept) if kept else u,
                                       machine)
                if isinstance(rendered, str):
                    why = f"cannot render for {machine.name}: {rendered}"
                    if u.reason != why and target == u.machine:
                        reasons.append((u.name, u.machine, why))
                    continue
                unit, key = rendered
                sealed = self.seal(unit)
                if isinstance(sealed, str):
                    why = f"cannot run on {machine.name}: {sealed}"
                    if u.reason != why and target == u.machine:
                        reasons.append((u.name, u.machine, why))
                    continue
                live.add(key)
                expected[(u.name, machine.name)] = sealed[0]
                spec = unit.spec(want, u.generation)
                if sealed[1]:  # the values go to this machine's set, and nowhere else
                    spec["hash"], spec["secrets"] = sealed
                base = peers_base(key, sealed[1])
                if base is not None:  # it read placements: OnPeersChange= applies
                    spec["base"] = base
                    if unit.config.get("on_peers_change") == "reload":
                        spec["reload"] = True
                sets[machine.name].append(spec)
        return sets, expected, reasons, live
