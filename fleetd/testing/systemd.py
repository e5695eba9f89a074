"""A fake systemd driver for unit tests of the supervisor's Driver=systemd wiring.

It answers what the supervisor asks a systemd driver (start, statuses, stop, forget,
installed, recover) from a dict, and records the calls. ``Supervised`` is a supervisor
wired to one. The real driver is tested against a real systemd host in
tests/integration.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor
from fleetd.cgroups.none import NoneBackend
from fleetd.drivers.base import Handle, StartContext
from fleetd.drivers.systemd import SystemdDriver

FAKE_PID = 4242


def status(state: str, pid: Optional[int] = None, restarts: int = 0,
           error: Optional[str] = None) -> Dict[str, Any]:
    """One unit as ``SystemdDriver.statuses`` reports it."""
    return {"state": state, "pid": pid, "restarts": restarts, "exit_status": None,
            "error": error, "known": True, "active_state": state, "sub_state": "",
            "result": "success"}


class FakeSystemd(SystemdDriver):
    """``now``: each unit's status; ``calls``: "start x", "stop x", "forget x" in order;
    ``left``: unit files a previous agent left installed."""

    def __init__(self) -> None:
        super().__init__(unit_dir="/nonexistent")
        self.now: Dict[str, Dict[str, Any]] = {}
        self.calls: List[str] = []
        self.left: List[str] = []

    def start(self, config: Dict[str, Any], ctx: StartContext, command_index: int = 0) -> Handle:
        self.calls.append(f"start {ctx.unit}")
        self.now[ctx.unit] = status("running", pid=FAKE_PID)
        return Handle(driver="systemd", pid=FAKE_PID, create_time=0.0, started_at=1.0,
                      invocation_id=ctx.invocation_id, unit=ctx.unit)

    def statuses(self, names: Sequence[str]) -> Dict[str, Dict[str, Any]]:
        return {n: dict(self.now.get(n, status("stopped"))) for n in names}

    def stop(self, name: str, timeout: Optional[float] = None) -> Dict[str, Any]:
        self.calls.append(f"stop {name}")
        self.now[name] = status("stopped")
        return self.now[name]

    def forget(self, name: str, timeout: Optional[float] = None) -> None:
        self.calls.append(f"forget {name}")
        self.now.pop(name, None)

    def installed(self) -> List[str]:
        return list(self.left)

    def recover(self, record: Dict[str, Any]) -> Optional[Handle]:
        handle = Handle.from_record(record)
        return handle if handle.unit in self.now else None


class Supervised:
    """A supervisor (machine m1, no cgroups) whose systemd driver is ``fake`` (a new
    FakeSystemd by default; share one to play an agent restart), and the ``unit``
    reports it emits, in order."""

    def __init__(self, root: str, fake: Optional[FakeSystemd] = None) -> None:
        self.fake = fake if fake is not None else FakeSystemd()
        self.reports: List[Dict[str, Any]] = []
        self.sup = Supervisor(AgentState(root), "m1", self._emit, backend=NoneBackend("test"))
        self.sup.drivers["systemd"] = self.fake
        self.sup.systemd.driver = self.fake

    def _emit(self, data: bytes) -> None:
        msg = json.loads(data)
        if msg["type"] == "unit":
            self.reports.append(msg["unit"])

    def states(self) -> List[str]:
        return [r["state"] for r in self.reports]

    def last(self, name: str) -> Dict[str, Any]:
        """The last report of unit ``name`` ({} before the first)."""
        return ([r for r in self.reports if r["name"] == name] or [{}])[-1]

    def starts(self, name: str) -> int:
        return self.fake.calls.count(f"start {name}")
