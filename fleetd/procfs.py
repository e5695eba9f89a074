"""/proc for the lab and the tests: whether a process runs, its parent, name, children,
command line, its pid in its own PID namespace, and which namespaces it is in.

Standard library only. Liveness and start times are the agent side's own reader
(fleetd.drivers.base, the reuse guard of its records), used here rather than copied, so
that "alive" means one thing everywhere: the process exists and is not a zombie (it has
ended and only waits for its parent, and this machine's PID 1 may reap late).

Every function answers for a process that is gone (or never was) without raising:
False, None, "" or [].
"""

from __future__ import annotations

import os
from typing import List, Optional

from fleetd.drivers.base import alive as _alive
from fleetd.drivers.base import start_ticks

__all__ = ["alive", "children", "cmdline", "comm", "namespace", "nspid", "ppid",
           "start_ticks", "status_field"]


def alive(pid: int, ticks: int = -1) -> bool:
    """Does ``pid`` run, and is it the process that started at ``ticks`` (start_ticks;
    -1: whichever has the pid)? A zombie does not run."""
    return _alive(pid, ticks)


def status_field(pid: int, field: str) -> Optional[str]:
    """One field of /proc/PID/status (``PPid``, ``Name``, ``NSpid``, ...), stripped."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == field:
                    return value.strip()
    except OSError:
        pass
    return None


def ppid(pid: int) -> Optional[int]:
    value = status_field(pid, "PPid")
    return int(value) if value else None


def comm(pid: int) -> Optional[str]:
    """The process's name (its executable's, at most 15 characters)."""
    return status_field(pid, "Name")


def nspid(pid: int) -> Optional[int]:
    """The pid in the process's innermost PID namespace (a systemd host's numbering)."""
    value = status_field(pid, "NSpid")
    return int(value.split()[-1]) if value else None


def children(pid: int) -> List[int]:
    """The children of the process's main thread (those of its other threads are not)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def cmdline(pid: int) -> str:
    """The command line, its arguments joined by spaces (a kernel thread's is "")."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def namespace(pid: int, kind: str = "net") -> Optional[int]:
    """The inode of the process's ``kind`` namespace (net, mnt, pid, uts, ...): two
    processes are in the same one when these are equal."""
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None
