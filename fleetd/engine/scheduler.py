"""Where a unit may go, and which of those places it goes to. Pure: no I/O, no clock.

The reconciler (engine/reconciler.py) decides *which* units need a machine; this module
answers "where" for one unit at a time against a ``Cluster``: the machines, and what is
already placed on them in this pass. It keeps fleet's meaning of [X-Fleet] and adds
resources (fleet counted units only):

* **hard filters**, checked in this order so a refusal names the first one that bites:
  the machine is up; ``MachineID=`` (full id or a unique prefix); ``MachineMetadata=``
  (values OR'd within a key, keys AND'ed, as fleet's ``machine.HasMetadata``); the
  unit's capabilities; ``Conflicts=`` globs and ``Replaces=`` (both keep two units
  apart, and either side naming the other is enough, as fleet's ``AgentState``); and
  free capacity for the unit's reservation (``MemoryMax=`` bytes or percent, ``CPUQuota=``).
* **ranking**: among machines that pass, the least loaded by reservation wins (the
  larger of its reserved memory and CPU fractions). For ranking only, a unit counts as
  at least 0.1 CPU and 200 MiB, as Kubernetes scores pods without requests, so units
  that reserve nothing still spread instead of piling onto one empty-looking machine.
  Ties go to fewer units, then to a stable hash of the machine name, never to chance.
* **Global units** run on every up machine that matches their metadata and
  capabilities, has room for them, and runs nothing they must stay apart from.
* **unknown capacity**: a machine reporting 0 CPUs or 0 bytes has not told us what it
  has. A unit that reserves that resource never goes there (we could not keep the
  promise); other units may, but only after every machine whose capacity is known, so a
  machine whose facts have not arrived yet does not soak up work meanwhile.

Speed: a pass places tens of thousands of units on a thousand machines, so machines are
indexed by metadata value and capability, units with the same static constraints share
one heap of candidates keyed by load (entries refresh lazily, since loads only grow
while a pass places units), conflicts are per-machine name sets plus per-machine counts
of glob patterns (each unit name is matched once against patterns indexed by their
literal prefix), and a reservation that fitted nowhere in a group is remembered so
identical units fail without another scan.
"""

from __future__ import annotations

import bisect
import fnmatch
import functools
import heapq
import re
import zlib
from typing import (
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Set,
    Tuple,
)

from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import INACTIVE
from fleetd.units.xfleet import Requirements, is_glob

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
RANK_FLOOR_MEMORY = 200 * MiB  # ranking only: what a unit without MemoryMax= counts as
RANK_FLOOR_MILLICPU = 100  # ranking only: what a unit without CPUQuota= counts as

Matcher = Callable[[str], Optional["re.Match[str]"]]
# (capacity unknown, load, units, hash of name, index, version): a heap entry for a host
Entry = Tuple[int, float, int, int, int, int]
GroupKey = Tuple[Tuple[Tuple[str, Tuple[str, ...]], ...], Tuple[str, ...]]


# --- units ---------------------------------------------------------------------------------


def millicpus(cpus: float) -> int:
    """CPUs as integer thousandths: sums stay exact whatever order units are added in."""
    return max(0, round(cpus * 1000))


@functools.lru_cache(maxsize=4096)
def _matcher(pattern: str) -> Matcher:
    return re.compile(fnmatch.translate(pattern)).match


class Relations:
    """A unit's Conflicts= and Replaces= patterns, split into exact names and globs.

    Both options mean "never on the same machine" (Replaces= also says who yields, which
    the reconciler handles), so one structure serves both and a check is a few set
    lookups plus the glob patterns actually used.
    """

    __slots__ = ("globs", "literal")

    def __init__(self, conflicts: Tuple[str, ...], replaces: Tuple[str, ...]) -> None:
        patterns = set(conflicts) | set(replaces)
        self.literal = frozenset(p for p in patterns if not is_glob(p))
        self.globs = tuple(sorted(p for p in patterns if is_glob(p)))


@functools.lru_cache(maxsize=65536)
def _relations(conflicts: Tuple[str, ...], replaces: Tuple[str, ...]) -> Relations:
    return Relations(conflicts, replaces)


def relations(req: Requirements) -> Relations:
    return _relations(req.conflicts, req.replaces)


def _names(pattern: str, name: str) -> bool:
    return _matcher(pattern)(name) is not None


class Globs:
    """Every glob pattern of a pass, indexed by its literal prefix.

    Which patterns match a unit name is asked for every machine a unit is checked
    against; with the patterns keyed by the text before their first wildcard
    ("web@" for ``web@*.service``), answering costs a few dict lookups plus a regex only
    for the patterns that could match, and each name is answered once per pass.
    """

    def __init__(self) -> None:
        self._by_prefix: Dict[str, List[str]] = {}
        self._lengths: List[int] = []
        self._known: Set[str] = set()
        self._cache: Dict[str, FrozenSet[str]] = {}

    def __contains__(self, pattern: str) -> bool:
        return pattern in self._known

    def register(self, pattern: str) -> None:
        self._known.add(pattern)
        cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
        self._by_prefix.setdefault(pattern[:cut], []).append(pattern)
        if cut not in self._lengths:
            bisect.insort(self._lengths, cut)
        self._cache.clear()

    def matching(self, name: str) -> FrozenSet[str]:
        found = self._cache.get(name)
        if found is None:
            by_prefix = self._by_prefix
            found = self._cache[name] = frozenset(
                p for n in self._lengths if n <= len(name)
                for p in by_prefix.get(name[:n], ()) if _matcher(p)(name) is not None)
        return found


def apart(a: str, a_req: Requirements, b: str, b_req: Requirements) -> Optional[str]:
    """Why units ``a`` and ``b`` may not share a machine, seen from ``a`` (None: they may).

    Symmetric as in fleet: either unit naming the other (by glob) is enough.
    """
    if any(_names(p, b) for p in a_req.replaces):
        return f"it replaces {b}"
    if any(_names(p, a) for p in b_req.replaces):
        return f"{b} replaces it"
    if any(_names(p, b) for p in a_req.conflicts) or any(_names(p, a) for p in b_req.conflicts):
        return f"it conflicts with {b}"
    return None


# --- formatting ------------------------------------------------------------------------------


def size(n: int) -> str:
    if n >= TiB:
        return f"{n / TiB:.1f} TiB"
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n} bytes"


def cpus(milli: int) -> str:
    return f"{milli / 1000:.1f} CPUs"


def metadata_text(metadata: Tuple[Tuple[str, Tuple[str, ...]], ...]) -> str:
    """As the user wrote it: ``role=db role=cache region=eu``."""
    return " ".join(f"{k}={v}" for k, values in metadata for v in values)


def _some(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


# --- machines ------------------------------------------------------------------------------


class Host:
    """One machine during a pass: its capacity, what is placed on it, and its load.

    Mutable on purpose (a pass adds units one by one); a Cluster is built per pass and
    thrown away, so nothing leaks between calls.
    """

    __slots__ = (
        "capabilities",
        "count",
        "cpu_cap",
        "cpu_rank",
        "cpu_used",
        "drain_overdue",
        "draining",
        "glob_count",
        "glob_refs",
        "index",
        "literal_refs",
        "lost",
        "machine_id",
        "mem_cap",
        "mem_rank",
        "mem_used",
        "metadata",
        "name",
        "residents",
        "silent_s",
        "tiebreak",
        "up",
        "version",
    )

    def __init__(self, view: MachineView, index: int) -> None:
        self.name = view.name
        self.index = index
        self.up = view.up
        self.lost = view.lost
        self.silent_s = view.silent_s
        self.draining = view.draining
        self.drain_overdue = view.drain_overdue
        self.machine_id = view.machine_id or ""
        self.metadata = view.metadata
        self.capabilities = view.capabilities
        self.mem_cap = max(0, int(view.memory_bytes))
        self.cpu_cap = millicpus(view.cpus)
        self.tiebreak = zlib.crc32(view.name.encode())
        self.mem_used = self.cpu_used = 0  # reservations, for fit
        self.mem_rank = self.cpu_rank = 0  # reservations with the ranking floor, for load
        self.count = 0
        self.version = 0  # bumped on every change: heap entries carry it to detect staleness
        self.residents: Dict[str, Requirements] = {}
        self.literal_refs: Dict[str, int] = {}  # exact names residents keep away
        self.glob_refs: Dict[str, int] = {}  # glob patterns residents keep away
        self.glob_count: Dict[str, int] = {}  # registered pattern -> residents it matches

    def memory_need(self, req: Requirements) -> int:
        return req.memory_bytes + int(self.mem_cap * req.memory_percent / 100.0)

    def fits(self, req: Requirements, milli: int) -> bool:
        wants_memory = bool(req.memory_bytes or req.memory_percent)
        if wants_memory and (not self.mem_cap
                             or self.mem_used + self.memory_need(req) > self.mem_cap):
            return False
        return not milli or (bool(self.cpu_cap) and self.cpu_used + milli <= self.cpu_cap)

    def blocked(self, name: str, rel: Relations, matched: FrozenSet[str]) -> bool:
        """Whether a resident and ``name`` must stay apart (Conflicts=/Replaces=, either
        way); ``matched`` are the registered glob patterns that match ``name``."""
        residents = self.residents
        for other in rel.literal:
            if other in residents and other != name:
                return True
        count = self.glob_count
        if any(count.get(p) for p in rel.globs):
            return True
        if name in self.literal_refs:
            return True
        refs = self.glob_refs
        return any(p in refs for p in matched)

    def blocker(self, name: str, req: Requirements) -> Optional[str]:
        """The first resident (by name) that keeps ``name`` off this machine, and why."""
        for other in sorted(self.residents):
            if other != name:
                why = apart(name, req, other, self.residents[other])
                if why:
                    return why
        return None

    def add(self, name: str, req: Requirements, rel: Relations, milli: int,
            matched: FrozenSet[str]) -> None:
        mem = self.memory_need(req)
        self.residents[name] = req
        self.mem_used += mem
        self.cpu_used += milli
        self.mem_rank += max(mem, RANK_FLOOR_MEMORY)
        self.cpu_rank += max(milli, RANK_FLOOR_MILLICPU)
        self.count += 1
        self.version += 1
        for p in rel.literal:
            self.literal_refs[p] = self.literal_refs.get(p, 0) + 1
        for p in rel.globs:
            self.glob_refs[p] = self.glob_refs.get(p, 0) + 1
        for p in matched:
            self.glob_count[p] = self.glob_count.get(p, 0) + 1

    def remove(self, name: str, matched: FrozenSet[str]) -> None:
        """Only while the reconciler decides what stays (before any heap exists)."""
        req = self.residents.pop(name)
        rel = relations(req)
        mem, milli = self.memory_need(req), millicpus(req.cpus)
        self.mem_used -= mem
        self.cpu_used -= milli
        self.mem_rank -= max(mem, RANK_FLOOR_MEMORY)
        self.cpu_rank -= max(milli, RANK_FLOOR_MILLICPU)
        self.count -= 1
        self.version += 1
        for refs, patterns in ((self.literal_refs, rel.literal), (self.glob_refs, rel.globs),
                               (self.glob_count, matched)):
            for p in patterns:
                refs[p] -= 1
                if not refs[p]:
                    del refs[p]

    def load(self) -> float:
        """The larger reserved fraction of memory and CPU (known capacities only)."""
        mem = self.mem_rank / self.mem_cap if self.mem_cap else 0.0
        cpu = self.cpu_rank / self.cpu_cap if self.cpu_cap else 0.0
        return max(mem, cpu)

    def entry(self) -> Entry:
        unknown = 0 if (self.mem_cap or self.cpu_cap) else 1
        return (unknown, self.load(), self.count, self.tiebreak, self.index, self.version)

    def static_refusal(self, req: Requirements, draining_ok: bool = False) -> Optional[str]:
        """Why this machine cannot take the unit whatever else runs there, as a predicate
        ("is not up", "lacks capability x"); None when it can."""
        if not self.up:
            return "is not up"
        if self.draining and not draining_ok:
            return "is draining"
        if req.machine_id and not self.machine_id.startswith(req.machine_id):
            return f"is not MachineID={req.machine_id}"
        if not metadata_matches(self.metadata, req.metadata):
            return f"does not match MachineMetadata={metadata_text(req.metadata)}"
        missing = [c for c in req.capabilities if c not in self.capabilities]
        if missing:
            return f"lacks {_capabilities(missing)}"
        return None


def metadata_matches(have: Mapping[str, str],
                     want: Tuple[Tuple[str, Tuple[str, ...]], ...]) -> bool:
    return all(have.get(key) in values for key, values in want)


def _capabilities(caps: Sequence[str]) -> str:
    return ("capability " if len(caps) == 1 else "capabilities ") + ", ".join(caps)


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
        self._groups: Dict[GroupKey, Group] = {}
        self._no_fit: Set[Tuple[GroupKey, int, float, int]] = set()
        self._explained: Dict[Tuple[GroupKey, int, float, int], str] = {}
        self._named: Dict[str, int] = {}  # exact names some resident keeps away, anywhere
        self.globs = Globs()

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
                match = _matcher(p)
                for h in self.hosts:
                    n = sum(match(r) is not None for r in h.residents)
                    if n:
                        h.glob_count[p] = n

    def blocked(self, host: Host, name: str, rel: Relations) -> bool:
        self._know(rel)
        return host.blocked(name, rel, self.globs.matching(name))

    # -- static candidates -------------------------------------------------------------

    def resolve_machine_id(self, value: str) -> Tuple[Optional[Host], str]:
        """MachineID=: the machine whose id is ``value`` or starts with it, if just one."""
        at = bisect.bisect_left(self._ids, (value, -1))
        found: List[Host] = []
        while at < len(self._ids) and self._ids[at][0].startswith(value):
            found.append(self.hosts[self._ids[at][1]])
            at += 1
        exact = [h for h in found if h.machine_id == value]
        if len(exact) == 1:
            return exact[0], ""
        if len(found) == 1:
            return found[0], ""
        if not found:
            return None, f"MachineID={value} matches no machine"
        names = sorted(h.name for h in found)
        return None, f"MachineID={value} is ambiguous: it matches {_some(names, 5)}"

    def group(self, req: Requirements) -> Group:
        caps = tuple(sorted(set(req.capabilities)))
        key: GroupKey = (req.metadata, caps)
        found = self._groups.get(key)
        if found is None:
            members = self._members(req.metadata, caps)
            refusal = "" if members else self._refusal(req.metadata, caps)
            found = self._groups[key] = Group(key, members, refusal)
        return found

    def _members(self, metadata: Tuple[Tuple[str, Tuple[str, ...]], ...],
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

    def _refusal(self, metadata: Tuple[Tuple[str, Tuple[str, ...]], ...],
                 caps: Tuple[str, ...]) -> str:
        if not self.hosts:
            return "no machines are registered"
        if not self.up and self.draining:
            return (f"no machine takes new units ({_some([h.name for h in self.draining])} "
                    f"draining, {len(self.hosts) - len(self.draining)} more not up)")
        if not self.up:
            return f"no machine is up ({len(self.hosts)} registered, none connected)"
        if metadata:
            want = metadata_text(metadata)
            if not any(metadata_matches(h.metadata, metadata) for h in self.up):
                down = [h.name for h in self.hosts if metadata_matches(h.metadata, metadata)]
                if down:
                    state = "matches but is" if len(down) == 1 else "match but are"
                    return (f"no machine that is up matches MachineMetadata={want} "
                            f"({_some(down)} {state} not up)")
                return f"no machine matches MachineMetadata={want}"
            return f"no machine matching MachineMetadata={want} has {_capabilities(caps)}"
        return f"no machine that is up has {_capabilities(caps)}"

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

    # -- explaining -----------------------------------------------------------------------

    def explain(self, name: str, req: Requirements, candidates: Sequence[Host],
                group: Optional[Group] = None) -> str:
        """Why none of ``candidates`` (all passing the static filters) can take the unit.

        In user terms: who it must stay apart from, or how much room it needs and the
        most any candidate has ("no machine with 2.0 GiB free; h1 has 1.2 GiB"). When
        ``candidates`` is a whole ``group`` and no Conflicts=/Replaces= touches the unit,
        the answer depends only on its reservation, so identical units share one.
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
        why = self._explain(name, req, rel, milli, candidates)
        if memo is not None:
            self._explained[memo] = why
        return why

    def _explain(self, name: str, req: Requirements, rel: Relations, milli: int,
                 candidates: Sequence[Host]) -> str:
        blocked: List[Host] = []
        roomy_blocked = 0
        open_hosts: List[Host] = []
        for h in candidates:
            if self.blocked(h, name, rel):
                blocked.append(h)
                roomy_blocked += h.fits(req, milli)
            else:
                open_hosts.append(h)
        if not open_hosts:
            # name who is in the way on the first few only: each answer sorts residents
            shown = [(h.name, h.blocker(name, req) or "a unit there conflicts with it")
                     for h in blocked[:3]]
            if len(blocked) == 1:
                return f"{shown[0][1]} on {shown[0][0]}"
            listed = ", ".join(f"{h} ({why})" for h, why in shown)
            if len(blocked) > 3:
                listed += f" and {len(blocked) - 3} more"
            return f"every candidate machine runs a unit it must stay apart from: {listed}"
        why = self._short_of_room(req, milli, open_hosts, alone=len(candidates) == 1)
        if roomy_blocked:
            verbs = "has room but runs" if roomy_blocked == 1 else "have room but run"
            why += f"; {roomy_blocked} more {verbs} a unit it must stay apart from"
        return why

    def _short_of_room(self, req: Requirements, milli: int, hosts: Sequence[Host],
                       alone: bool) -> str:
        wants_mem = bool(req.memory_bytes or req.memory_percent)
        if wants_mem and not any(h.mem_cap for h in hosts):
            return "no candidate machine reports its memory, and the unit reserves memory"
        if milli and not any(h.cpu_cap for h in hosts):
            return "no candidate machine reports its CPUs, and the unit reserves CPU"

        def ratio(h: Host) -> Tuple[float, int]:
            parts: List[float] = []
            if wants_mem:
                need = h.memory_need(req)
                free = max(0, h.mem_cap - h.mem_used) if h.mem_cap else 0
                parts.append(free / need if need else (1.0 if h.mem_cap else 0.0))
            if milli:
                parts.append(max(0, h.cpu_cap - h.cpu_used) / milli)
            return (min(parts) if parts else 0.0, -h.index)

        best = max(hosts, key=ratio)
        need_parts: List[str] = []
        have_parts: List[str] = []
        if wants_mem:
            free = max(0, best.mem_cap - best.mem_used)
            if req.memory_percent and not req.memory_bytes:
                need_parts.append(f"{req.memory_percent:g}% of its memory")
                have_parts.append(f"{size(free)} of {size(best.mem_cap)}")
            else:
                need_parts.append(size(best.memory_need(req)))
                have_parts.append(size(free))
        if milli:
            need_parts.append(cpus(milli))
            have_parts.append(cpus(max(0, best.cpu_cap - best.cpu_used)))
        need, have = " and ".join(need_parts), " and ".join(have_parts)
        if alone:
            return f"{best.name} has only {have} free, it needs {need}"
        return f"no machine with {need} free; {best.name} has {have}"

    # -- global units -------------------------------------------------------------------

    def place_globals(self, units: Sequence[UnitView]) -> Dict[str, List[str]]:
        """Each Global unit's machines, adding it to them as a resident.

        Globals go in name order, so of two conflicting globals the first keeps the
        machines; each then counts as a resident that later units must respect. Like any
        unit, a global one needs room for its reservation: it skips a machine that is
        full rather than overcommit it (it does not evict what is already there, and it
        arrives as soon as room is made). The reconciler places globals after the units
        that stay and before new ones, so host-wide units come first on a fresh machine.
        """
        out: Dict[str, List[str]] = {}
        for unit in sorted(units, key=lambda u: u.name):
            rel = relations(unit.req)
            milli = millicpus(unit.req.cpus)
            group = self.group(Requirements(metadata=unit.req.metadata,
                                            capabilities=unit.req.capabilities))
            # a draining machine keeps its global units until its other units are gone
            staying = [h for h in self.draining
                       if h.count and not h.static_refusal(unit.req, draining_ok=True)]
            targets = [h for h in sorted(group.members + staying, key=lambda h: h.index)
                       if h.fits(unit.req, milli) and not self.blocked(h, unit.name, rel)]
            for h in targets:
                self.add(h, unit.name, unit.req)
            out[unit.name] = [h.name for h in targets]
        return out


def global_targets(unit: UnitView, machines: Sequence[MachineView],
                   placed: Mapping[str, Sequence[UnitView]]) -> List[str]:
    """The machines (sorted by name) a Global unit runs on.

    Every up machine matching its MachineMetadata= and capabilities where no unit in
    ``placed`` (machine name -> the non-global units placed there) must stay apart from
    it, and with room for its reservation. ``placed`` carries views, not names, because
    the check goes both ways: the global unit's Conflicts= against their names, and their
    Conflicts= against its name (and their reservations take room). For all Global units
    at once, including conflicts among them, use ``global_placements``.
    """
    cluster = Cluster(machines)
    for machine in sorted(placed):
        host = cluster.by_name.get(machine)
        if host is None:
            continue
        for r in placed[machine]:
            if not r.req.is_global:
                cluster.add(host, r.name, r.req)
    return cluster.place_globals([unit])[unit.name]


def global_placements(units: Sequence[UnitView],
                      machines: Sequence[MachineView]) -> Dict[str, List[str]]:
    """Every active Global unit -> its machines, given where the other units are placed.

    What the loop hands each machine after applying ``reconciler.plan``; the same
    computation plan() makes, so the two agree. Of two conflicting Global units, the one
    whose name sorts first keeps the machines.
    """
    cluster = Cluster(machines)
    for u in sorted(units, key=lambda u: u.name):
        host = cluster.by_name.get(u.machine) if u.machine else None
        if host is not None and u.desired != INACTIVE and not u.req.is_global:
            cluster.add(host, u.name, u.req)
    return cluster.place_globals([u for u in units
                                  if u.req.is_global and u.desired != INACTIVE])
