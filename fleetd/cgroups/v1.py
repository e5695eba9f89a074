"""cgroup v1 (Documentation/admin-guide/cgroup-v1/): one hierarchy per controller.

A unit has a directory in each hierarchy fleetd uses (memory, cpu, cpuacct, pids,
freezer; some hosts co-mount cpu and cpuacct as one). The limits, as systemd maps them
on v1:
- MemoryMax= is ``memory.limit_in_bytes`` (-1: none). ``memory.memsw.limit_in_bytes``
  (memory + swap) is left alone, so that MemoryMax means the same on v1 and v2 (memory
  only, swap separate) - as systemd does. ``memory.oom_control`` counts ``oom_kill``
  (4.13+).
- CPUQuota= is ``cpu.cfs_quota_us`` per ``cpu.cfs_period_us`` (-1: none).
- CPUWeight= becomes ``cpu.shares``: weight * 1024 / 100, clamped to [2, 262144]
  (systemd's cgroup_cpu_weight_to_shares); CPUWeight=idle is shares 2 and, where the
  kernel has it (5.15+), ``cpu.idle`` 1 - the kernel refuses a shares write while idle.
- TasksMax= is ``pids.max``.

Killing: v1 has no cgroup.kill. With the freezer, the cgroup is frozen (``FROZEN``
written, ``freezer.state`` polled until it reads ``FROZEN``), every process signalled,
then thawed: nothing can fork in between. A frozen v1 task only dies once thawed, which
happens at once. Without the freezer, cgroup.procs is re-read until a pass finds no pid
not yet signalled.
"""

from __future__ import annotations

import os
import time
from typing import Dict, Mapping, Optional, Set

from fleetd.cgroups import fs
from fleetd.cgroups.limits import DEFAULT_WEIGHT, IDLE_WEIGHT, Limits
from fleetd.cgroups.v2 import PERIOD_US, quota_us

SHARES_DEFAULT = 1024
SHARES_MIN = 2
SHARES_MAX = 262144
FREEZE_WAIT_S = 0.5
ITERATE_S = 1.0  # without a freezer: how long to keep chasing new forks


def shares(weight: Optional[int]) -> int:
    """systemd's mapping of CPUWeight= to v1 cpu.shares."""
    if weight is None:
        return SHARES_DEFAULT
    if weight == IDLE_WEIGHT:
        return SHARES_MIN
    return max(SHARES_MIN, min(SHARES_MAX, weight * SHARES_DEFAULT // DEFAULT_WEIGHT))


def apply(dirs: Mapping[str, str], limits: Limits) -> None:
    """Write the limits into the unit's directory of each controller in ``dirs``
    (controller -> directory); unset limits go back to "none"."""
    if "memory" in dirs:
        memory = limits.memory_max if limits.memory_max is not None else -1
        fs.write(os.path.join(dirs["memory"], "memory.limit_in_bytes"), str(memory))
    if "cpu" in dirs:
        cpu = dirs["cpu"]
        fs.write(os.path.join(cpu, "cpu.cfs_period_us"), str(PERIOD_US))
        quota = quota_us(limits.cpu_quota) if limits.cpu_quota is not None else -1
        fs.write(os.path.join(cpu, "cpu.cfs_quota_us"), str(quota))
        idle = os.path.join(cpu, "cpu.idle")
        has_idle = os.path.exists(idle)
        if has_idle and limits.cpu_weight != IDLE_WEIGHT:
            fs.write(idle, "0")
        fs.write(os.path.join(cpu, "cpu.shares"), str(shares(limits.cpu_weight)))
        if has_idle and limits.cpu_weight == IDLE_WEIGHT:
            fs.write(idle, "1")
    if "pids" in dirs:
        value = str(limits.tasks_max) if limits.tasks_max is not None else "max"
        fs.write(os.path.join(dirs["pids"], "pids.max"), value)


def kill(directory: str, freezer: Optional[str], signum: int) -> int:
    """Signal every process of the unit: ``directory`` lists them, ``freezer`` (the
    unit's freezer cgroup, if that hierarchy is mounted) stops forks meanwhile."""
    if not os.path.isdir(directory):
        return 0
    if freezer is not None and os.path.isdir(freezer):
        thaw = _freeze(freezer)
        try:
            return fs.signal_all(fs.procs(directory), signum)
        finally:
            if thaw:
                fs.write(os.path.join(freezer, "freezer.state"), "THAWED")
    signalled: Set[int] = set()
    deadline = time.monotonic() + ITERATE_S
    while time.monotonic() < deadline:
        new = [pid for pid in fs.procs(directory) if pid not in signalled]
        if not new:
            break
        fs.signal_all(new, signum)
        signalled.update(new)
    return len(signalled)


def _freeze(freezer: str) -> bool:
    """True if we froze it (and must thaw it); False if it was frozen already."""
    path = os.path.join(freezer, "freezer.state")
    state = (fs.read(path) or "").strip()
    if state in ("FROZEN", "FREEZING") or not state:
        return False
    fs.write(path, "FROZEN")
    deadline = time.monotonic() + FREEZE_WAIT_S
    while (fs.read(path) or "").strip() != "FROZEN" and time.monotonic() < deadline:
        time.sleep(0.001)
    return True


def oom_kills(memory_dir: str) -> int:
    """OOM kills in the unit's memory cgroup and every cgroup below it: v1 counts a kill
    only in the victim's own cgroup (v2 also counts it in each ancestor), and a unit's
    program may run in one below (a run beside a prepared process: KernelUnit.leaf)."""
    total = 0
    for here, _dirs, _files in os.walk(memory_dir):
        total += fs.keyed(os.path.join(here, "memory.oom_control")).get("oom_kill", 0)
    return total


def stats(dirs: Mapping[str, str]) -> Dict[str, int]:
    out: Dict[str, int] = {}

    def put(name: str, path: str, scale: int = 1) -> None:
        value = fs.number(path)
        if value is not None:
            out[name] = value // scale

    if "memory" in dirs:
        put("memory_bytes", os.path.join(dirs["memory"], "memory.usage_in_bytes"))
        put("memory_peak_bytes", os.path.join(dirs["memory"], "memory.max_usage_in_bytes"))
    if "cpuacct" in dirs:
        put("cpu_usage_usec", os.path.join(dirs["cpuacct"], "cpuacct.usage"), 1000)
    if "cpu" in dirs:
        cpu = fs.keyed(os.path.join(dirs["cpu"], "cpu.stat"))
        if "nr_throttled" in cpu:
            out["cpu_throttled_periods"] = cpu["nr_throttled"]
        if "throttled_time" in cpu:
            out["cpu_throttled_usec"] = cpu["throttled_time"] // 1000
    if "pids" in dirs:
        put("tasks", os.path.join(dirs["pids"], "pids.current"))
    return out

