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
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from fleetd.engine import rollout
from fleetd.registry.base import LAUNCHED, FailureRecord, Registry, UnitInput, UnitRecord
from fleetd.units.xupdate import UpdatePolicy
from fleetd.wire import names

log = logging.getLogger("fleetd.engine")

PolicyFn = Callable[[UnitRecord], Optional[UpdatePolicy]]  # None: the unit cannot be read


class Rolling:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._healthy: Dict[Tuple[str, str, int], float] = {}  # copy -> healthy since

    def templates(self, units: Sequence[UnitRecord], ready: Callable[[UnitRecord], bool],
                  failures: Mapping[str, List[FailureRecord]], policy: PolicyFn, now: float
                  ) -> List[rollout.Template]:
        """What the rollout needs of each template that has instances."""
        instances: Dict[str, List[UnitRecord]] = {}
        for u in units:
            parts = names.split(u.name)
            if parts.instance:  # not None (a plain unit) nor "" (the template itself)
                instances.setdefault(f"{parts.prefix}@.{parts.suffix}", []).append(u)
        seen: Set[Tuple[str, str, int]] = set()
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
        for key in set(self._healthy) - seen:  # healthy no more, or gone
            del self._healthy[key]
        return out

    async def apply(self, r: rollout.Rollout, units: Sequence[UnitRecord],
                    epoch: Optional[int]) -> bool:
        """Write the rollout's decisions; True if any content changed (a pass must push
        it). A content whose text is gone is not written, and the status says so."""
        by_name = {u.name: u for u in units}
        wrote = False
        for c in r.changes:
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
