"""``[X-Fleet]``: where a unit may run, as fleet defined it, plus what it reserves.

fleet's options keep fleet's meaning (MachineID, MachineOf, MachineMetadata, Conflicts,
Global, Replaces; fleet's old ``X-Condition...`` spellings are accepted too). On top:
``Driver=`` picks the driver (without it: java for a unit with an [X-Java] section, else
exec; one that contradicts a section present is an error), and [Service]'s
MemoryMax=/CPUQuota= become a reservation the scheduler counts against each machine's
capacity (fleet counted units only).

What happens when things fail (fleet had neither):

``RescheduleAttempts=``       moves to another machine after the unit *failed* on one
                              (start limit hit, or its health check ended it for good)
                              within ``RescheduleIntervalSec=``; ``infinity``: no limit,
                              ``0``: never move (default 5 in 1h)
``RescheduleDelaySec=``       wait before each move (default 5s), growing by
``RescheduleDelayFunction=``  ``exponential`` (default: doubles per attempt) or
                              ``constant``, up to ``RescheduleMaxDelaySec=`` (5min)
``FenceAfterSec=``            fencing: the agent stops the unit once it has heard
                              nothing from fleetd for this long, and fleetd starts a
                              new copy elsewhere only after that time has surely passed
                              (for programs where two copies are worse than none).
                              Default: never; units keep running while cut off.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Dict, List, Optional, Protocol, Sequence, Tuple, TypeVar

from fleetd.units.context import UnitContext
from fleetd.units.deps import Deps, deps
from fleetd.units.ports import Port, ports
from fleetd.units.timespan import format_timespan
from fleetd.units.xupdate import UpdatePolicy
from fleetd.wire import names
from fleetd.wire.unitspec import Limits

X = "X-Fleet"
KNOWN = ("MachineID", "MachineOf", "MachineMetadata", "Conflicts", "Global", "Replaces",
         "Driver", "RescheduleAttempts", "RescheduleIntervalSec", "RescheduleDelaySec",
         "RescheduleDelayFunction", "RescheduleMaxDelaySec", "FenceAfterSec", "Ports",
         "OnPeersChange")
PEERS_CHANGE = ("restart", "reload")
DELAY_FUNCTIONS = ("exponential", "constant")
MIN_FENCE_S = 3.0  # three default heartbeats
DRIVERS = ("exec", "java", "systemd")
JAVA_SECTION = "X-Java"  # xjava.X; spelt here so that fleetctl (is_glob) need not load it
# fleetd's sections that only some drivers read, and what to do about a Driver= outside them
SECTION_DRIVERS = {
    JAVA_SECTION: (("java",), "remove Driver= (a unit with [X-Java] is a java unit) or the "
                              "[X-Java] section"),
    "X-Check": (("exec", "java"), "a systemd unit's health is systemd's (Restart=, "
                                  "WatchdogSec=)"),
}
GLOB_CHARS = "*?["  # fnmatch's; never in a unit name (fleetd.wire.names), so never ambiguous
MAX_RESCHEDULE_ATTEMPTS = 10000  # in one RescheduleIntervalSec=; more is "infinity"


class Dated(Protocol):
    """A failure as the reschedule policy counts it: when it happened."""

    @property
    def at(self) -> float: ...


Failed = TypeVar("Failed", bound=Dated)


@dataclasses.dataclass(frozen=True)
class Reschedule:
    """Where a unit goes after failing on a machine: Nomad's reschedule policy, in
    systemd's spelling. ``attempts`` None means no limit."""

    attempts: Optional[int] = 5
    interval_s: float = 3600.0
    delay_s: float = 5.0
    exponential: bool = True
    max_delay_s: float = 300.0

    def delay(self, used: int) -> float:
        """Seconds to wait before the move that follows ``used`` earlier ones."""
        if not self.exponential:
            return min(self.delay_s, self.max_delay_s)
        return min(self.delay_s * (2.0 ** min(used, 60)), self.max_delay_s)

    def interval(self) -> str:
        """RescheduleIntervalSec= as a person writes it: ``1h``, ``10min``, ``90s``."""
        return format_timespan(self.interval_s)

    def counted(self, failures: Sequence[Failed], now: float) -> List[Failed]:
        """The failures (of the current content) this policy counts at ``now``: those
        within its interval, in the order given. The one place attempts are counted:
        the reconciler decides on it and ``fleetctl`` shows it."""
        return [f for f in failures if f.at > now - self.interval_s]

    def used(self, failures: Sequence[Dated], now: float) -> int:
        """Reschedule attempts spent at ``now`` (at most the limit): what users see."""
        window = len(self.counted(failures, now))
        return window if self.attempts is None else min(window, self.attempts)


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
    reschedule: Reschedule = Reschedule()  # after failing on a machine
    fence_after_s: Optional[float] = None  # FenceAfterSec=: stop when cut off this long
    fence_wait_s: Optional[float] = None  # silence after which the fenced copy is surely
    # gone: FenceAfterSec= plus the unit's stop timeout (fleetd moves it only then)
    update: UpdatePolicy = dataclasses.field(default_factory=UpdatePolicy)  # [X-Update]
    # [Unit] Requires= Wants= BindsTo= After= Before= naming fleet units (units/deps.py)
    deps: Deps = dataclasses.field(default_factory=Deps)
    ports: Tuple[Port, ...] = ()  # Ports=: what it serves, shown as address:port (ports.py)


def driver(ctx: UnitContext) -> str:
    """``Driver=``, or what the sections say: a unit with an ``[X-Java]`` section is a
    java unit, any other an exec unit. A Driver= that a section present contradicts
    (``SECTION_DRIVERS``) is an error naming both lines: one of the two is a mistake,
    and running the unit would silently ignore the section."""
    entry = ctx.entry(X, "Driver")
    name = ctx.single(X, "Driver")
    if name is None:
        return "java" if ctx.file.header(JAVA_SECTION) is not None else "exec"
    if name not in DRIVERS:
        ctx.fail(entry, f"Driver={name} is not available (drivers: {', '.join(DRIVERS)})")
    for section, (readers, hint) in SECTION_DRIVERS.items():
        line = ctx.file.header(section)
        if line is not None and name not in readers:
            ctx.fail(entry, f"Driver={name} contradicts [{section}] at {ctx.source}:{line}: "
                            f"only {' and '.join(readers)} units read [{section}]; {hint}")
    return name


def requirements(ctx: UnitContext, limits: Limits) -> Requirements:
    ctx.check_known(X, KNOWN)
    machine_id = ctx.single(X, "MachineID")
    if machine_id is not None and not re.fullmatch(r"[0-9a-zA-Z_.-]+", machine_id):
        ctx.fail(ctx.entry(X, "MachineID"), f"{machine_id!r} is not a machine id")
    units = {key: _unit_names(ctx, key) for key in ("MachineOf", "Replaces")}
    metadata: Dict[str, List[str]] = {}
    for entry in ctx.many(X, "MachineMetadata"):
        for item in ctx.split(entry):
            key, eq, value = item.partition("=")
            if not eq or not key:
                ctx.fail(entry, f"{item!r} is not key=value")
            if not value:
                ctx.fail(entry, f"{key}= has no value (a machine never matches an empty one)")
            metadata.setdefault(key, [])
            if value not in metadata[key]:
                metadata[key].append(value)
    conflicts = _unit_names(ctx, "Conflicts", globs=True)
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
    fence = ctx.timespan(X, "FenceAfterSec", math.inf)
    if fence < MIN_FENCE_S:
        ctx.fail(ctx.entry(X, "FenceAfterSec"),
                 f"must be at least {MIN_FENCE_S:g}s: fleetd pings the agent every heartbeat "
                 "(1s by default), and a shorter fence would stop units on one late ping")
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
        reschedule=reschedule(ctx),
        fence_after_s=None if fence == math.inf else fence,
        deps=deps(ctx),
        ports=ports(ctx),
    )


def is_glob(pattern: str) -> bool:
    """A pattern of unit names (``web@*.service``), not one name."""
    return any(c in pattern for c in GLOB_CHARS)


def _unit_names(ctx: UnitContext, key: str, globs: bool = False) -> Tuple[str, ...]:
    """The unit names an option lists, each once, in order. Every name follows the one
    rule (fleetd.wire.names): a name no unit can have would never match, silently.
    Conflicts= also takes globs, which match names (a unit may match its own:
    ``Conflicts=web@*.service`` spreads the instances); MachineOf= and Replaces= name
    other units, one each."""
    found: List[str] = []
    for entry in ctx.many(X, key):
        for n in ctx.split(entry):
            if globs and is_glob(n):
                found.append(n)
                continue
            why = names.problem(n)
            if why is not None:
                ctx.fail(entry, f"{why} (or a glob like web@*.service)" if globs else why)
            if n == ctx.name.full and not globs:
                ctx.fail(entry, f"a unit cannot name itself in {key}=")
            found.append(n)
    return tuple(dict.fromkeys(found))


def reschedule(ctx: UnitContext) -> Reschedule:
    default = Reschedule()
    attempts: Optional[int] = default.attempts
    text = ctx.single(X, "RescheduleAttempts")
    if text is not None:
        if text.strip() in ("infinity", "unlimited"):
            attempts = None
        else:
            attempts = ctx.whole(ctx.entry(X, "RescheduleAttempts"), text, 0,
                                 MAX_RESCHEDULE_ATTEMPTS)
    function = ctx.single(X, "RescheduleDelayFunction") or "exponential"
    if function not in DELAY_FUNCTIONS:
        ctx.fail(ctx.entry(X, "RescheduleDelayFunction"),
                 f"{function!r} is not one of {', '.join(DELAY_FUNCTIONS)}")
    policy = Reschedule(
        attempts=attempts,
        interval_s=ctx.timespan(X, "RescheduleIntervalSec", default.interval_s),
        delay_s=ctx.timespan(X, "RescheduleDelaySec", default.delay_s),
        exponential=function == "exponential",
        max_delay_s=ctx.timespan(X, "RescheduleMaxDelaySec", default.max_delay_s),
    )
    if policy.interval_s <= 0:
        ctx.fail(ctx.entry(X, "RescheduleIntervalSec"), "must be more than 0")
    if policy.delay_s == math.inf:
        ctx.fail(ctx.entry(X, "RescheduleDelaySec"),
                 "infinity would never move the unit; say RescheduleAttempts=0")
    return policy


def on_peers_change(ctx: UnitContext, driver: str, reload_commands: bool) -> str:
    """OnPeersChange=: ``restart`` (the default) or ``reload``, what a unit re-rendered
    only because the placements its template reads (``units()``) changed does to its
    running copy. ``reload`` runs ExecReload= in fleetd's agent, so it needs an exec or
    java unit with ExecReload=; refused here otherwise, rather than silently restarting."""
    entry = ctx.entry(X, "OnPeersChange")
    value = ctx.single(X, "OnPeersChange") or "restart"
    if value not in PEERS_CHANGE:
        ctx.fail(entry, f"{value!r} is not one of {', '.join(PEERS_CHANGE)}")
    if value == "reload" and driver == "systemd":
        chosen = ctx.entry(X, "Driver")
        ctx.fail(entry, f"OnPeersChange=reload is for exec and java units (fleetd's agent "
                        f"runs their ExecReload=), and Driver=systemd at {ctx.source}:"
                        f"{chosen.line if chosen else '?'} makes this a systemd unit; "
                        "remove OnPeersChange= (it is then restarted)")
    if value == "reload" and not reload_commands:
        line = ctx.file.header("Service")
        where = f"[Service] at {ctx.source}:{line}" if line is not None else "no [Service]"
        ctx.fail(entry, f"OnPeersChange=reload needs ExecReload= in [Service] ({where} has "
                        "none): the command that makes the program read its new settings")
    return value
