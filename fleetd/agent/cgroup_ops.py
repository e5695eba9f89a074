"""A unit's cgroup, as the process runner uses it: emptied (signal, then SIGKILL),
removed, asked for its OOM kills, and swept when no adopted program explains it.

A unit's cgroup (fleet/<machine-id>/<unit> in every hierarchy) lives from its first
start until the unit settles (exited, failed, stopped) or is forgotten; restarts reuse
it, and its OOM kill counter then tells an OOM kill from any other SIGKILL. At agent
start every cgroup of ours that no adopted program explains is emptied (SIGKILL) and
removed: a program whose record was lost in a crash must not run on beside the copy
the agent is about to start.
"""

from __future__ import annotations

import logging
import signal
from typing import Dict, List, Optional

from fleetd.agent.managed import Managed
from fleetd.agent.runner import until
from fleetd.cgroups import Backend, CgroupError
from fleetd.drivers.base import Driver, Handle
from fleetd.wire.unitspec import KILL_GRACE_S

log = logging.getLogger("fleet-agent")


class UnitCgroups:
    """The cgroups of this agent's units, on ``backend`` (the host's, detected by the
    composition root; NoneBackend where there are none)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def clear(self, m: Managed, signum: int, timeout: Optional[float],
                    handle: Optional[Handle] = None, driver: Optional[Driver] = None,
                    leaf: str = "") -> bool:
        """Make the unit's cgroup empty (and its main process gone, if ``handle``):
        ``signum`` to every process, SIGKILL after ``timeout``. True once empty.
        ``driver`` signals a program adopted from a pre-cgroup agent (outside ours).
        ``leaf``: only that run's cgroup below the unit's (a prepared process waiting
        in the other is left alone)."""
        cg = self.backend.unit(m.name, handle.pid if handle else None)
        if leaf:
            cg = cg.leaf(leaf) or cg
        outside = handle is not None and not handle.unit

        def empty() -> bool:
            return (handle is None or m.gone.is_set()) and cg.empty()

        if empty():
            return True
        for sig, wait in ((signum, timeout), (signal.SIGKILL, KILL_GRACE_S)):
            try:
                cg.kill(sig)
            except CgroupError as exc:
                log.warning("%s: %s", m.name, exc)
            if outside and handle is not None and driver is not None:
                driver.signal(handle, sig)
            if await until(empty, wait):
                return True
            if sig == signal.SIGKILL:
                break
            log.warning("%s: still running %ss after %s: SIGKILL", m.name, wait,
                        signal.Signals(sig).name)
        return empty()

    def release(self, name: str) -> None:
        """Remove the unit's cgroup: it runs nothing any more."""
        try:
            self.backend.unit(name).remove()
        except CgroupError as exc:
            log.warning("%s: cannot remove its cgroup: %s", name, exc)

    def oom_kills(self, name: str) -> int:
        try:
            return self.backend.unit(name).oom_kills()
        except CgroupError:
            return 0

    def usage(self, name: str) -> Dict[str, int]:
        """What the host counts of the unit's cgroup (memory_bytes, cpu_usage_usec, ...,
        and oom_kills), read now; empty where it keeps nothing (no cgroup, no backend)."""
        try:
            cg = self.backend.unit(name)
            found = cg.stats()
            if found:
                found["oom_kills"] = cg.oom_kills()
            return found
        except (CgroupError, OSError):
            return {}

    def names(self) -> List[str]:
        """The units that have a cgroup of ours on this host."""
        return list(self.backend.units())

    async def sweep(self, name: str) -> None:
        """A cgroup no adopted program explains (the caller holds the unit's lock): kill
        what is in it (a program whose record was lost, or the leftovers of one that
        died) and remove it."""
        cg = self.backend.unit(name)
        if not cg.empty():
            log.warning("%s: killing processes no record explains: %s", name, cg.pids())
            try:
                cg.kill(signal.SIGKILL)
            except CgroupError as exc:
                log.warning("%s: %s", name, exc)
            await until(cg.empty, KILL_GRACE_S)
        self.release(name)
