"""The rollout's thin layer: registry records in, engine/rollout.py's decisions written.

Each leader's pass hands it every unit as stored (templates included), how each one
runs where it is placed (``ready``) and the failures on record. It remembers since when
each copy has been healthy (``MinHealthySec=`` counts from the first pass that saw it
so: after a restart of fleetd the count starts again, which only slows a rollout), and
writes what the rollout decided, each write fenced by the engine's term as its others
are: an instance's new content through ``put_units`` (as a user's submit of the
instance would: the agent then restarts it with that content), a
template put back by AutoRevert= (``follow=False``: its instances follow one at a time,
again), and each template's status line as its reason.

A Global unit's rollout (its copies are per machine, engine/rollout.py) is not written:
the registry holds the unit's new content from its submit on, and this layer keeps which
content each machine is given (``machine_hashes``), which the pass renders there
(engine/desired.py ``sets``, ``held``). A machine keeps what its agent reports it runs
(one of the unit's kept versions) until the rollout gives it the new content; a machine
with no copy running takes the unit's content at once. Which machines were given the
new content is held in memory: a fleetd that restarts mid-rollout reads it back from the
agents' reports (a copy changed but not yet reported then counts as not changed, and
goes back to the old content until its turn: slower, never two steps at once).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from fleetd import protocol
from fleetd.engine import rollout
from fleetd.registry.base import (
    LAUNCHED,
    FailureRecord,
    ObservedRecord,
    Registry,
    UnitInput,
    UnitRecord,
    VersionRecord,
)
from fleetd.units.xupdate import UpdatePolicy
from fleetd.wire import names

log = logging.getLogger("fleetd.engine")

PolicyFn = Callable[[UnitRecord], Optional[UpdatePolicy]]  # None: the unit cannot be read
HashOn = Callable[[UnitRecord, str], Optional[str]]  # what a unit runs as on a machine
ReadyOn = Callable[[UnitRecord, str], bool]  # does it run there as wanted, healthy
Observed = Mapping[Tuple[str, str], ObservedRecord]
RUNS = (protocol.RUNNING, protocol.STARTING)  # an old copy a change would restart


class Rolling:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._healthy: Dict[Tuple[str, str, int], float] = {}  # copy -> healthy since
        self._seen: Set[Tuple[str, str, int]] = set()  # copies healthy in this pass
        # a Global unit's machine -> the content the rollout gave it there, and when
        self._given: Dict[Tuple[str, str], Tuple[str, float]] = {}
        # each rollout's copies in flight after the last pass (its events compare)
        self.in_flight: Dict[str, Tuple[rollout.Where, ...]] = {}

    def machine_hashes(self, u: UnitRecord, machines: Sequence[str], observed: Observed,
                       hash_on: HashOn, kept: Optional[Sequence[VersionRecord]] = None
                       ) -> Dict[str, str]:
        """The content Global unit ``u`` is given on each of ``machines``: the rollout's
        choice, else the kept version its agent reports running there, else its own.
        ``kept``: its versions, if the caller read them already."""
        out = {m: u.hash for m in machines}
        versions = [v.hash for v in (self.registry.list_versions(u.name) if kept is None
                                     else kept)]
        if len(versions) < 2:
            return out  # never changed: nothing to roll
        for m in machines:
            given = self._given.get((u.name, m))
            if given is not None and given[0] in versions:
                out[m] = given[0]
                continue
            o = observed.get((u.name, m))
            if o is None or o.hash == hash_on(u, m):
                continue
            out[m] = next((h for h in reversed(versions) if h != u.hash and
                           hash_on(dataclasses.replace(u, hash=h), m) == o.hash), u.hash)
        return out

    def held(self, units: Sequence[UnitRecord], globals: Mapping[str, Sequence[str]],
             observed: Observed, hash_on: HashOn) -> Dict[Tuple[str, str], str]:
        """(Global unit, machine) -> the content it keeps there while its rollout has
        not reached that machine: what the pass renders there (engine/desired.py)."""
        held: Dict[Tuple[str, str], str] = {}
        for u in units:
            if u.name in globals:
                given = self.machine_hashes(u, globals[u.name], observed, hash_on)
                held.update({(u.name, m): h for m, h in given.items() if h != u.hash})
        return held

    def globals(self, units: Sequence[UnitRecord], globals: Mapping[str, Sequence[str]],
                observed: Observed, hash_on: HashOn, ready: ReadyOn, policy: PolicyFn,
                now: float) -> List[rollout.Template]:
        """What the rollout needs of each Global unit with copies: one per machine."""
        out = []
        for u in units:
            machines = globals.get(u.name)
            p = policy(u) if machines else None
            versions = self.registry.list_versions(u.name) if p is not None else []
            if not machines or p is None or len(versions) < 2:
                continue
            copies = []
            given_hashes = self.machine_hashes(u, machines, observed, hash_on, versions)
            for m, h in sorted(given_hashes.items()):
                o = observed.get((u.name, m))
                key = (f"{u.name} on {m}", h, u.generation)
                if h == u.hash and ready(u, m):
                    self._seen.add(key)
                    self._healthy.setdefault(key, now)
                failed = None
                if (h == u.hash and o is not None and o.state == protocol.FAILED
                        and o.generation == u.generation and o.hash == hash_on(u, m)):
                    failed = f"on {m}: {o.error or 'failed'}"
                running = u.desired == LAUNCHED and (
                    h == u.hash or (o is not None and o.state in RUNS))
                given = self._given.get((u.name, m))
                copies.append(rollout.Copy(m, h, running, given[1] if given else 0.0,
                                           self._healthy.get(key), failed))
            latest = versions[-1] if versions[-1].hash == u.hash else None
            out.append(rollout.Template(
                u.name, u.hash, tuple(rollout.Version(v.version, v.hash, v.via)
                                      for v in versions),
                latest.at if latest else u.updated_at, p, tuple(copies), u.reason,
                latest.options if latest else {}, per_machine=True))
        return out

    def templates(self, units: Sequence[UnitRecord], ready: Callable[[UnitRecord], bool],
                  failures: Mapping[str, List[FailureRecord]], policy: PolicyFn, now: float
                  ) -> List[rollout.Template]:
        """What the rollout needs of each template that has instances."""
        instances: Dict[str, List[UnitRecord]] = {}
        for u in units:
            parts = names.split(u.name)
            if parts.instance:  # not None (a plain unit) nor "" (the template itself)
                instances.setdefault(f"{parts.prefix}@.{parts.suffix}", []).append(u)
        seen = self._seen = set()  # templates() begins a pass; globals() follows
        out = []
        for t in units:
            if not names.is_template(t.name) or t.name not in instances:
                continue
            p = policy(t)
            versions = self.registry.list_versions(t.name)
            if p is None or not versions:
                continue
            copies = []
            for u in instances[t.name]:
                key = (u.name, u.hash, u.generation)
                if ready(u):
                    seen.add(key)
                    self._healthy.setdefault(key, now)
                failed = next((f.reason for f in reversed(failures.get(u.name, ()))
                               if f.hash == u.hash and f.at >= u.updated_at), None)
                copies.append(rollout.Copy(
                    u.name, u.hash, u.desired == LAUNCHED and u.machine is not None,
                    max(u.updated_at, u.placed_at or 0.0), self._healthy.get(key), failed))
            latest = versions[-1] if versions[-1].hash == t.hash else None
            out.append(rollout.Template(
                t.name, t.hash, tuple(rollout.Version(v.version, v.hash, v.via)
                                      for v in versions),
                latest.at if latest else t.updated_at, p, tuple(copies), t.reason,
                latest.options if latest else {}))
        return out

    def forget(self, units: Sequence[UnitRecord]) -> None:
        """After a pass's ``templates`` and ``globals``: forget the copies healthy no
        more, and the machines' contents of units gone."""
        for key in set(self._healthy) - self._seen:
            del self._healthy[key]
        names_ = {u.name for u in units}
        for given in [k for k in self._given if k[0] not in names_]:
            del self._given[given]

    async def apply(self, r: rollout.Rollout, units: Sequence[UnitRecord],
                    epoch: Optional[int], now: float = 0.0) -> bool:
        """Write the rollout's decisions; True if any content changed (a pass must push
        it). A content whose text is gone is not written, and the status says so."""
        by_name = {u.name: u for u in units}
        wrote = False
        for c in r.changes:
            if c.machine is not None:  # a Global unit's copy: rendered so from now on
                log.info("%s on %s -> content %s: %s", c.unit, c.machine, c.hash[:12],
                         c.reason)
                self._given[(c.unit, c.machine)] = (c.hash, now)
                wrote = True
                continue
            u, text = by_name.get(c.unit), self.registry.unit_text(c.hash)
            if u is None or text is None:
                continue
            log.info("%s -> content %s: %s", c.unit, c.hash[:12], c.reason)
            await self.registry.put_units([UnitInput(u.name, text, c.hash, u.vars)], None,
                                          replace=True, via=c.reason, epoch=epoch)
            wrote = True
        for v in r.reverts:
            t, text = by_name.get(v.template), self.registry.unit_text(v.hash)
            if t is None or text is None:
                r.status[v.template] = f"{r.status.get(v.template, '')}; but the text of " \
                                       f"v{v.number} is gone: nothing reverted"
                continue
            log.warning("%s -> back to v%d: %s", v.template, v.number, v.reason)
            await self.registry.put_units([UnitInput(t.name, text, v.hash, t.vars)], None,
                                          replace=True, follow=False, via=v.reason,
                                          epoch=epoch)
            wrote = True
        if r.status:
            await self.registry.set_placements(
                [(name, None, status) for name, status in sorted(r.status.items())],
                epoch=epoch)
        return wrote
