"""One machine during a pass: its capacity, what is placed on it, and its load.

Cluster accounting (engine/cluster.py holds the machines of a pass): reservations are
``MemoryMax=`` bytes or percent and ``CPUQuota=`` in integer thousandths of a CPU, so
sums stay exact whatever order units are added in. A machine reporting 0 CPUs or 0 bytes
has not told us what it has: a unit that reserves that resource never goes there.

For ranking only, a unit counts as at least 0.1 CPU and 200 MiB, as Kubernetes scores
pods without requests, so units that reserve nothing still spread instead of piling
onto one empty-looking machine.
"""

from __future__ import annotations

import zlib
from typing import Dict, FrozenSet, Optional, Tuple

from fleetd.engine.constraints import Relations, apart, relations, static_mismatch
from fleetd.engine.views import MachineView
from fleetd.units.xfleet import Requirements

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
RANK_FLOOR_MEMORY = 200 * MiB  # ranking only: what a unit without MemoryMax= counts as
RANK_FLOOR_MILLICPU = 100  # ranking only: what a unit without CPUQuota= counts as

# (capacity unknown, load, units, hash of name, index, version): a heap entry for a host
Entry = Tuple[int, float, int, int, int, int]


def millicpus(cpus: float) -> int:
    """CPUs as integer thousandths: sums stay exact whatever order units are added in."""
    return max(0, round(cpus * 1000))


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
        mismatch = static_mismatch(self.name, self.machine_id, self.metadata,
                                   self.capabilities, req)
        return mismatch.refusal() if mismatch else None
