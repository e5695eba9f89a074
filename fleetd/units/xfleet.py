"""``[X-Fleet]``: where a unit may run, as fleet defined it, plus what it reserves.

fleet's options keep fleet's meaning (MachineID, MachineOf, MachineMetadata, Conflicts,
Global, Replaces; fleet's old ``X-Condition...`` spellings are accepted too). On top:
``Driver=`` picks the driver, and [Service]'s MemoryMax=/CPUQuota= become a reservation
the scheduler counts against each machine's capacity (fleet counted units only).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Optional, Tuple

from fleetd.units import execline
from fleetd.units.context import UnitContext

X = "X-Fleet"
KNOWN = ("MachineID", "MachineOf", "MachineMetadata", "Conflicts", "Global", "Replaces",
         "Driver")
DRIVERS = ("exec", "java", "systemd")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\-]+(@[A-Za-z0-9:_.\\-]*)?\.service")


@dataclasses.dataclass(frozen=True)
class Requirements:
    """What the scheduler must honour for one unit. Pure data, hashable."""

    machine_id: Optional[str] = None  # MachineID=: full id or a unique prefix
    machine_of: Tuple[str, ...] = ()  # MachineOf=: on the machine of these units
    metadata: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()  # key -> values (OR), keys AND
    conflicts: Tuple[str, ...] = ()  # Conflicts=: globs of unit names
    is_global: bool = False  # Global=: on every matching machine
    replaces: Tuple[str, ...] = ()  # Replaces=: take these units' place
    memory_bytes: int = 0  # reservation from MemoryMax= (absolute)
    memory_percent: float = 0.0  # reservation from MemoryMax=N% (of each machine)
    cpus: float = 0.0  # reservation from CPUQuota= (200% -> 2.0)
    capabilities: Tuple[str, ...] = ()  # facts a machine must have ("systemd", ...)


def driver(ctx: UnitContext) -> str:
    name = ctx.single(X, "Driver") or "exec"
    if name not in DRIVERS:
        ctx.fail(ctx.entry(X, "Driver"),
                 f"Driver={name} is not available (drivers: {', '.join(DRIVERS)})")
    return name


def requirements(ctx: UnitContext, limits: Dict[str, Any]) -> Requirements:
    ctx.check_known(X, KNOWN)
    machine_id = ctx.single(X, "MachineID")
    if machine_id is not None and not re.fullmatch(r"[0-9a-zA-Z_.-]+", machine_id):
        ctx.fail(ctx.entry(X, "MachineID"), f"{machine_id!r} is not a machine id")
    units: Dict[str, Tuple[str, ...]] = {}
    for key in ("MachineOf", "Replaces"):
        names = ctx.words(X, key)
        for n in names:
            if not _UNIT_NAME.fullmatch(n):
                ctx.fail(ctx.many(X, key)[-1], f"{n!r} is not a unit name")
            if n == ctx.name.full:
                ctx.fail(ctx.many(X, key)[-1], f"a unit cannot name itself in {key}=")
        units[key] = tuple(dict.fromkeys(names))
    metadata: Dict[str, List[str]] = {}
    for entry in ctx.many(X, "MachineMetadata"):
        for item in execline.split_words(ctx.expand(entry)):
            key, eq, value = item.partition("=")
            if not eq or not key:
                ctx.fail(entry, f"{item!r} is not key=value")
            if not value:
                ctx.fail(entry, f"{key}= has no value (a machine never matches an empty one)")
            metadata.setdefault(key, [])
            if value not in metadata[key]:
                metadata[key].append(value)
    conflicts = tuple(dict.fromkeys(ctx.words(X, "Conflicts")))
    is_global = ctx.boolean(X, "Global", False)
    if is_global:
        for key, present in (("MachineID", machine_id), ("MachineOf", units["MachineOf"]),
                             ("Replaces", units["Replaces"])):
            if present:
                ctx.fail(ctx.entry(X, key),
                         f"{key}= cannot be combined with Global=true (a global unit runs "
                         "on every matching machine)")
    if machine_id and units["MachineOf"]:
        ctx.fail(ctx.entry(X, "MachineOf"), "MachineOf= cannot be combined with MachineID=")
    return Requirements(
        machine_id=machine_id,
        machine_of=units["MachineOf"],
        metadata=tuple((k, tuple(v)) for k, v in sorted(metadata.items())),
        conflicts=conflicts,
        is_global=is_global,
        replaces=units["Replaces"],
        memory_bytes=int(limits.get("memory_max") or 0),
        memory_percent=float(limits.get("memory_max_percent") or 0.0),
        cpus=float(limits.get("cpu_quota") or 0.0),
    )
