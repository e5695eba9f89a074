"""The backend for hosts without usable cgroups (not root, a container without cgroupfs,
read-only cgroup mounts).

Programs still run, but:
- a unit that asks for any limit fails to start (``LimitsUnsupported``) instead of
  running unlimited, and ``facts()`` says no limit is enforceable, so the scheduler can
  place such units elsewhere;
- "the unit's processes" falls back to the process group its program leads (the exec
  driver starts each program in a new session). A program that daemonises leaves that
  group and cannot be found or killed here - the reason cgroups exist.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Dict, List, Optional

from fleetd.cgroups.base import LimitsUnsupported
from fleetd.cgroups.fs import WAKE_AFTER
from fleetd.cgroups.limits import Limits


def _nothing() -> None:
    """preexec_fn where there is no cgroup to join."""


class NoneUnit:
    def __init__(self, name: str, pgid: Optional[int], reason: str, proc: str = "/proc") -> None:
        self.name = name
        self.pgid = pgid
        self.reason = reason
        self._proc = proc

    def create(self, limits: Limits) -> None:
        if limits.requested():
            raise LimitsUnsupported(f"{self.name}: {limits.describe()} cannot be enforced on "
                                    f"this host: {self.reason}")

    def preexec(self) -> Callable[[], None]:
        return _nothing

    def leaf(self, name: str) -> None:
        return None  # no cgroups: nothing to keep apart

    def pids(self) -> List[int]:
        if self.pgid is None:
            return []
        found = []
        for entry in os.listdir(self._proc):
            if entry.isdigit() and self.contains(int(entry)):
                found.append(int(entry))
        return sorted(found)

    def contains(self, pid: int) -> bool:
        if self.pgid is None:
            return False
        try:
            return os.getpgid(pid) == self.pgid and not _zombie(self._proc, pid)
        except (ProcessLookupError, PermissionError):
            return False

    def kill(self, signum: int) -> int:
        if self.pgid is None:
            return 0
        count = len(self.pids())
        try:
            os.killpg(self.pgid, signum)
            if signum in WAKE_AFTER:
                os.killpg(self.pgid, signal.SIGCONT)
        except ProcessLookupError:
            return 0
        return count

    def empty(self) -> bool:
        return not self.pids()

    def remove(self) -> None:
        """Nothing was made."""

    def oom_kills(self) -> int:
        return 0

    def stats(self) -> Dict[str, int]:
        return {}


def _zombie(proc: str, pid: int) -> bool:
    try:
        with open(os.path.join(proc, str(pid), "stat")) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True  # gone meanwhile


class NoneBackend:
    version = "none"

    def __init__(self, reason: str, parent: str = "") -> None:
        self.reason = reason
        self.parent = parent

    def __repr__(self) -> str:
        return f"NoneBackend({self.reason!r})"

    def unit(self, name: str, pgid: Optional[int] = None) -> NoneUnit:
        return NoneUnit(name, pgid, self.reason)

    def units(self) -> List[str]:
        return []

    def facts(self) -> Dict[str, Any]:
        return {"version": "none", "limits": [], "controllers": {}, "membership": "pgid",
                "reason": self.reason}

    def remove(self) -> None:
        """Nothing was made."""
