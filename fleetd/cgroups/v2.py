"""cgroup v2 (Documentation/admin-guide/cgroup-v2.rst): one tree, files per cgroup.

What matters here:
- A controller works in a cgroup only if every ancestor enabled it for its children in
  ``cgroup.subtree_control``; so the path from the mount's root down to the unit's
  parent gets ``+memory +cpu +pids`` (those the host offers), top down.
- MemoryMax= is ``memory.max``; swap stays governed by ``memory.swap.max``, which fleetd
  leaves alone, like systemd (MemorySwapMax= is a separate option there).
- CPUQuota= is ``cpu.max`` ("$QUOTA $PERIOD" in microseconds), CPUWeight= is
  ``cpu.weight`` (same scale as systemd's), CPUWeight=idle is ``cpu.idle`` (5.15+).
- TasksMax= is ``pids.max``.
- ``cgroup.kill`` (5.14+) SIGKILLs the whole subtree atomically, forks included.
  ``cgroup.freeze`` (5.2+) stops every process, so that a signal can be sent to all of
  them without one forking a child we have not seen; ``cgroup.events`` reports
  ``frozen`` and ``populated`` (zombies do not count).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Dict, Iterable, List, Optional

from fleetd.cgroups import fs
from fleetd.cgroups.limits import DEFAULT_WEIGHT, IDLE_WEIGHT, Limits

PERIOD_US = 100_000  # systemd's default CPUQuotaPeriodSec=100ms
MIN_QUOTA_US = 1_000  # the kernel refuses less; systemd rounds up to it too
FREEZE_WAIT_S = 0.5


def quota_us(cpus: float, period_us: int = PERIOD_US) -> int:
    """CPUQuota as microseconds of CPU time per period: rounded (0.29 CPUs is 29000, not
    the 28999 a float floor gives), and at least 1 ms, as systemd clamps it."""
    return max(round(cpus * period_us), MIN_QUOTA_US)


def offered(mount: str) -> List[str]:
    """Controllers this v2 tree offers (only those not bound to a v1 hierarchy)."""
    return (fs.read(os.path.join(mount, "cgroup.controllers")) or "").split()


def enable(mount: str, parent: str, controllers: Iterable[str]) -> None:
    """Enable ``controllers`` for the children of every cgroup from ``mount`` down to
    ``mount/parent`` (inclusive), creating those cgroups. They hold no processes of their
    own, as v2's "no internal processes" rule requires of a cgroup that delegates."""
    wanted = sorted(controllers)
    parts = [p for p in parent.split("/") if p]
    for depth in range(len(parts) + 1):
        here = os.path.join(mount, *parts[:depth])
        fs.make(here)
        if not wanted:
            continue
        path = os.path.join(here, "cgroup.subtree_control")
        enabled = set((fs.read(path) or "").split())
        missing = [c for c in wanted if c not in enabled]
        if missing:
            fs.write(path, " ".join(f"+{c}" for c in missing))


def apply(directory: str, limits: Limits, controllers: Iterable[str]) -> None:
    """Write the limits of the given controllers; unset limits go back to "max"."""
    have = set(controllers)
    if "memory" in have:
        value = str(limits.memory_max) if limits.memory_max is not None else "max"
        fs.write(os.path.join(directory, "memory.max"), value)
    if "cpu" in have:
        quota = str(quota_us(limits.cpu_quota)) if limits.cpu_quota is not None else "max"
        fs.write(os.path.join(directory, "cpu.max"), f"{quota} {PERIOD_US}")
        _weight(directory, limits.cpu_weight)
    if "pids" in have:
        value = str(limits.tasks_max) if limits.tasks_max is not None else "max"
        fs.write(os.path.join(directory, "pids.max"), value)


def _weight(directory: str, weight: Optional[int]) -> None:
    # The kernel refuses a weight while the group is idle: leave idle first, enter it last.
    idle = os.path.join(directory, "cpu.idle")
    has_idle = os.path.exists(idle)
    weight_file = os.path.join(directory, "cpu.weight")
    if weight == IDLE_WEIGHT:
        if has_idle:
            fs.write(idle, "1")
        else:  # before 5.15: the lowest weight is the nearest thing
            fs.write(weight_file, "1")
        return
    if has_idle:
        fs.write(idle, "0")
    fs.write(weight_file, str(weight if weight is not None else DEFAULT_WEIGHT))


def populated(directory: str) -> bool:
    return fs.keyed(os.path.join(directory, "cgroup.events")).get("populated", 0) == 1


def kill(directory: str, signum: int) -> int:
    """Signal every process below ``directory``; see the module's notes for how."""
    if not os.path.isdir(directory):
        return 0
    kill_file = os.path.join(directory, "cgroup.kill")
    if signum == signal.SIGKILL and os.path.exists(kill_file):
        count = len(fs.procs(directory))
        fs.write(kill_file, "1")
        return count
    thaw = _freeze(directory)
    try:
        return fs.signal_all(fs.procs(directory), signum)
    finally:
        if thaw:
            fs.write(os.path.join(directory, "cgroup.freeze"), "0")


def _freeze(directory: str) -> bool:
    """Freeze the cgroup, waiting briefly for the kernel to confirm; True if we must thaw
    it afterwards (False where there is no freezer, or someone else froze it already)."""
    path = os.path.join(directory, "cgroup.freeze")
    current = fs.read(path)
    if current is None or current.strip() == "1":
        return False
    fs.write(path, "1")
    events = os.path.join(directory, "cgroup.events")
    deadline = time.monotonic() + FREEZE_WAIT_S
    # A task in uninterruptible sleep can delay "frozen": signal anyway after the wait,
    # it is still better than not freezing at all.
    while fs.keyed(events).get("frozen", 0) != 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    return True


def oom_kills(directory: str) -> int:
    return fs.keyed(os.path.join(directory, "memory.events")).get("oom_kill", 0)


def stats(directory: str, controllers: Iterable[str]) -> Dict[str, int]:
    have = set(controllers)
    out: Dict[str, int] = {}
    cpu = fs.keyed(os.path.join(directory, "cpu.stat"))  # usage_usec exists without "cpu"
    if "usage_usec" in cpu:
        out["cpu_usage_usec"] = cpu["usage_usec"]
    if "cpu" in have:
        for key, name in (("nr_throttled", "cpu_throttled_periods"),
                          ("throttled_usec", "cpu_throttled_usec")):
            if key in cpu:
                out[name] = cpu[key]
    if "memory" in have:
        for key, name in (("memory.current", "memory_bytes"), ("memory.peak", "memory_peak_bytes")):
            value = fs.number(os.path.join(directory, key))
            if value is not None:
                out[name] = value
    if "pids" in have:
        value = fs.number(os.path.join(directory, "pids.current"))
        if value is not None:
            out["tasks"] = value
    return out
