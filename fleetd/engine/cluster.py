"""The machines of one pass and what is placed on them: candidates, ranking, placing.

The reconciler (engine/reconciler.py) decides *which* units need a machine; the cluster
answers "where" for one unit at a time, given what is already placed in this pass:

* **candidates**: the machines that take new units (up, not draining) passing a unit's
  static filters (engine/constraints.py), then those with room for its reservation
  (engine/capacity.py) and running nothing it must stay apart from.
* **ranking**: among candidates, the least loaded by reservation wins (the larger of its
  reserved memory and CPU fractions). Ties go to fewer units, then to a stable hash of
  the machine name, never to chance. A machine whose capacity is unknown comes after
  every machine whose capacity is known, so one whose facts have not arrived yet does
  not soak up work meanwhile.
* **Global units** run on every up machine that matches their metadata and
  capabilities, has room for them, and runs nothing they must stay apart from.

Speed: a pass places tens of thousands of units on a thousand machines, so machines are
indexed by metadata value and capability, units with the same static constraints share
one heap of candidates keyed by load (entries refresh lazily, since loads only grow
while a pass places units), conflicts are per-machine name sets plus per-machine counts
of glob patterns (each unit name is matched once against patterns indexed by their
literal prefix), and a reservation that fitted nowhere in a group is remembered so
identical units fail without another scan (as is the explanation they share).
"""

from __future__ import annotations

import bisect
import heapq
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from fleetd.engine import explain as explaining
from fleetd.engine.capacity import Entry, Host, millicpus
from fleetd.engine.constraints import Globs, Metadata, Relations, matcher, relations, some
from fleetd.engine.views import MachineView, UnitView
from fleetd.units.xfleet import Requirements

GroupKey = Tuple[Metadata, Tuple[str, ...]]


class Group:
    """Up machines passing one set of static constraints, with a heap ordered by load."""

    __slots__ = ("heap", "key", "members", "refusal")

    def __init__(self, key: GroupKey, members: List[Host], refusal: str) -> None:
        self.key = key
        self.members = members
        self.refusal = refusal  # why nothing matches (only meaningful when members is empty)
        self.heap: Optional[List[Entry]] = None


class Cluster:
    """The machines of one pass and what is placed on them."""

    def __init__(self, machines: Sequence[MachineView]) -> None:
        self.hosts = [Host(m, i) for i, m in enumerate(sorted(machines, key=lambda m: m.name))]
        self.by_name = {h.name: h for h in self.hosts}
        # machines that take new units: up and not draining
        self.up = [h for h in self.hosts if h.up and not h.draining]
        self.draining = [h for h in self.hosts if h.up and h.draining]
        self._meta: Dict[str, Dict[str, Set[int]]] = {}
        self._caps: Dict[str, Set[int]] = {}
        for h in self.up:
            for key, value in h.metadata.items():
                self._meta.setdefault(key, {}).setdefault(value, set()).add(h.index)
            for cap in h.capabilities:
                self._caps.setdefault(cap, set()).add(h.index)
        self._ids = sorted((h.machine_id, h.index) for h in self.hosts if h.machine_id)
        self._names = [(h.name, h.index) for h in self.hosts]  # sorted, as the hosts are
        self._groups: Dict[GroupKey, Group] = {}
        self._no_fit: Set[Tuple[GroupKey, int, float, int]] = set()
        self._explained: Dict[Tuple[GroupKey, int, float, int], str] = {}
        self._named: Dict[str, int] = {}  # exact names some resident keeps away, anywhere
        self.globs = Globs()
        # Global units, once placed: each one's machines, and the machines a unit left
        # since (settle_globals places the globals there again)
        self._globals: Optional[Dict[str, Tuple[UnitView, List[Host]]]] = None
        self._vacated: Set[int] = set()

    def expect(self, patterns: Iterable[str]) -> None:
        """Register glob patterns before anything is placed (registering one later costs
        a scan of every resident)."""
        for p in patterns:
            if p not in self.globs:
                self.globs.register(p)

    def _know(self, rel: Relations) -> None:
        for p in rel.globs:
            if p not in self.globs:
                self.globs.register(p)
                match = matcher(p)
                for h in self.hosts:
                    n = sum(match(r) is not None for r in h.residents)
                    if n:
                        h.glob_count[p] = n

    def blocked(self, host: Host, name: str, rel: Relations) -> bool:
        self._know(rel)
        return host.blocked(name, rel, self.globs.matching(name))

    # -- static candidates -------------------------------------------------------------

    def resolve_machine_id(self, value: str) -> Tuple[Optional[Host], str]:
        """MachineID=: the machine whose id or name (as ``list-machines`` shows it) is
        ``value``, else the one whose id or name starts with it; several is an error
        naming them (``names_machine`` is the same rule for one machine)."""
        found: Dict[int, Host] = {}
        for index in (self._ids, self._names):
            at = bisect.bisect_left(index, (value, -1))
            while at < len(index) and index[at][0].startswith(value):
                found.setdefault(index[at][1], self.hosts[index[at][1]])
                at += 1
        exact = [h for h in found.values() if value in (h.machine_id, h.name)]
        if len(exact) == 1:
            return exact[0], ""
        if len(found) == 1:
            return next(iter(found.values())), ""
        if not found:
            return None, f"MachineID={value} matches no machine (by id or name)"
        names = sorted(h.name for h in (exact or found.values()))
        return None, f"MachineID={value} is ambiguous: it matches {some(names, 5)}"

    def group(self, req: Requirements) -> Group:
        caps = tuple(sorted(set(req.capabilities)))
        key: GroupKey = (req.metadata, caps)
        found = self._groups.get(key)
        if found is None:
            members = self._members(req.metadata, caps)
            refusal = "" if members else explaining.no_candidates(
                self.hosts, self.up, self.draining, req.metadata, caps)
            found = self._groups[key] = Group(key, members, refusal)
        return found

    def _members(self, metadata: Metadata,
                 caps: Tuple[str, ...]) -> List[Host]:
        chosen: Optional[Set[int]] = None
        for key, values in metadata:
            index = self._meta.get(key, {})
            matching: Set[int] = set()
            for v in values:
                matching |= index.get(v, set())
            chosen = matching if chosen is None else chosen & matching
            if not chosen:
                return []
        for cap in caps:
            having = self._caps.get(cap, set())
            chosen = set(having) if chosen is None else chosen & having
            if not chosen:
                return []
        if chosen is None:
            return list(self.up)
        return [self.hosts[i] for i in sorted(chosen)]

    # -- placing ------------------------------------------------------------------------

    def choose(self, group: Group, name: str, req: Requirements,
               avoid: FrozenSet[str] = frozenset()) -> Optional[Host]:
        """The least loaded member of ``group`` that can take ``name`` now, or None.

        Members named in ``avoid`` (where the unit failed lately) are taken only when no
        other member can take it: avoiding them must not leave the unit nowhere.

        Only valid while loads grow (the reconciler's placing phase): a stale heap entry
        then understates its host's load, so popping it and pushing the fresh one keeps
        the heap's minimum exact.
        """
        if not group.members:
            return None
        milli = millicpus(req.cpus)
        memo = (group.key, req.memory_bytes, req.memory_percent, milli)
        if memo in self._no_fit:
            return None
        heap = group.heap
        if heap is None:
            heap = group.heap = [h.entry() for h in group.members]
            heapq.heapify(heap)
        rel = relations(req)
        hosts = self.hosts
        popped: List[Entry] = []
        chosen: Optional[Host] = None
        fallback: Optional[Host] = None  # the best of the avoided members
        only_room = True  # every member refused for lack of room (not for a conflict)
        while heap:
            top = heap[0]
            host = hosts[top[4]]
            if top[5] != host.version:
                heapq.heapreplace(heap, host.entry())
                continue
            popped.append(heapq.heappop(heap))
            if not host.fits(req, milli):
                continue
            if self.blocked(host, name, rel):
                only_room = False
                continue
            if host.name in avoid:
                fallback = fallback or host
                continue
            chosen = host
            break
        for e in popped:
            heapq.heappush(heap, e)
        if chosen is None and fallback is not None:
            return fallback
        if chosen is None and only_room:
            self._no_fit.add(memo)  # a later unit asking as much fails too: loads only grow
        return chosen

    def can_take(self, host: Host, name: str, req: Requirements) -> bool:
        return host.fits(req, millicpus(req.cpus)) and not self.blocked(host, name,
                                                                          relations(req))

    def add(self, host: Host, name: str, req: Requirements) -> None:
        rel = relations(req)
        self._know(rel)
        host.add(name, req, rel, millicpus(req.cpus), self.globs.matching(name))
        for p in rel.literal:
            self._named[p] = self._named.get(p, 0) + 1

    def remove(self, host: Host, name: str) -> None:
        for p in relations(host.residents[name]).literal:
            self._named[p] -= 1
            if not self._named[p]:
                del self._named[p]
        host.remove(name, self.globs.matching(name))
        if self._globals is not None:
            self._vacated.add(host.index)

    # -- explaining -----------------------------------------------------------------------

    def explain(self, name: str, req: Requirements, candidates: Sequence[Host],
                group: Optional[Group] = None) -> str:
        """Why none of ``candidates`` (all passing the static filters) can take the unit
        (engine/explain.py). When ``candidates`` is a whole ``group`` and no
        Conflicts=/Replaces= touches the unit, the answer depends only on its
        reservation, so identical units share one.
        """
        milli = millicpus(req.cpus)
        rel = relations(req)
        memo: Optional[Tuple[GroupKey, int, float, int]] = None
        if (group is not None and not rel.literal and not rel.globs
                and name not in self._named and not self.globs.matching(name)):
            memo = (group.key, req.memory_bytes, req.memory_percent, milli)
            known = self._explained.get(memo)
            if known is not None:
                return known
        why = explaining.why_not(name, req, rel, milli, candidates, self.blocked)
        if memo is not None:
            self._explained[memo] = why
        return why

    # -- global units -------------------------------------------------------------------

    def place_globals(self, units: Sequence[UnitView]) -> Dict[str, List[str]]:
        """Each Global unit's machines, adding it to them as a resident.

        Globals go in name order, so of two conflicting globals the first keeps the
        machines; each then counts as a resident that later units must respect. Like any
        unit, a global one needs room for its reservation: it skips a machine that is
        full rather than overcommit it (it does not evict what is already there, and it
        arrives as soon as room is made). A draining machine keeps its global units
        while other units are on it. The reconciler places globals after the units that
        stay and before new ones, so host-wide units come first on a fresh machine, and
        settles them at the end of its pass (``settle_globals``).
        """
        placed = self._place_globals(units, None)
        self._globals = {u.name: (u, placed[u.name]) for u in units}
        self._vacated = set()
        return {name: [h.name for h in hosts] for name, hosts in placed.items()}

    def settle_globals(self) -> Dict[str, List[str]]:
        """Each Global unit placed by ``place_globals`` -> its machines (sorted by name) as
        the pass ends: the same as placing them now, after every other unit.

        Adding units after the globals changes nothing for them (an added unit was
        admitted around them: room and conflicts are checked both ways). Only a machine
        a unit left since can differ: a draining machine whose last unit was handed over
        gives its globals up, and room or a conflict that left lets a global in. On
        those machines alone the globals are taken off and placed again, in name order.
        """
        if self._globals is None:
            return {}
        vacated = {self.hosts[i] for i in self._vacated}
        again: Dict[str, List[Host]] = {}
        if vacated:
            for unit, hosts in self._globals.values():
                for h in hosts:
                    if h in vacated:
                        self.remove(h, unit.name)
            again = self._place_globals([u for u, _ in self._globals.values()], vacated)
        out: Dict[str, List[str]] = {}
        for name, (_, hosts) in self._globals.items():
            now = [h for h in hosts if h not in vacated] + again.get(name, [])
            out[name] = [h.name for h in sorted(now, key=lambda h: h.index)]
        return out

    def _place_globals(self, units: Sequence[UnitView],
                       only: Optional[Set[Host]]) -> Dict[str, List[Host]]:
        """``place_globals`` on every machine, or on ``only`` these."""
        out: Dict[str, List[Host]] = {}
        for unit in sorted(units, key=lambda u: u.name):
            rel = relations(unit.req)
            milli = millicpus(unit.req.cpus)
            group = self.group(Requirements(metadata=unit.req.metadata,
                                            capabilities=unit.req.capabilities))
            # a draining machine keeps its global units until its other units are gone
            staying = [h for h in self.draining
                       if h.count and not h.static_refusal(unit.req, draining_ok=True)]
            targets = [h for h in sorted(group.members + staying, key=lambda h: h.index)
                       if (only is None or h in only)
                       and h.fits(unit.req, milli) and not self.blocked(h, unit.name, rel)]
            for h in targets:
                self.add(h, unit.name, unit.req)
            out[unit.name] = targets
        return out
