"""Fake drivers for tests of the agent's supervisor: inject them instead of
monkeypatching the host's detection.

``FakeDriver`` plays a driver whose host service manager supervises (systemd's role:
``supervises_itself``). It answers start, statuses, stop, forget, installed and recover
from a dict, and records the calls. The real systemd driver is tested against a real
systemd host in tests/integration.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from fleetd.drivers.base import HOST_SUPERVISED, Handle, ServiceStatus, StartContext
from fleetd.wire.unitspec import UnitConfig

FAKE_PID = 4242


def status(state: str, pid: Optional[int] = None, restarts: int = 0,
           error: Optional[str] = None) -> ServiceStatus:
    """One unit as ``SupervisingDriver.statuses`` reports it."""
    return {"state": state, "pid": pid, "restarts": restarts, "exit_status": None,
            "error": error, "known": True, "active_state": state, "sub_state": "",
            "result": "success"}


class FakeDriver:
    """``now``: each unit's status; ``calls``: "start x", "stop x", "forget x" in order;
    ``left``: units a previous agent left installed. ``name`` is the driver's name
    (``systemd`` by default: the units under test say Driver=systemd)."""

    capabilities = HOST_SUPERVISED

    def __init__(self, name: str = "systemd") -> None:
        self.name = name
        self.now: Dict[str, ServiceStatus] = {}
        self.calls: List[str] = []
        self.left: List[str] = []

    def start(self, config: UnitConfig, ctx: StartContext, command_index: int = 0) -> Handle:
        self.calls.append(f"start {ctx.unit}")
        self.now[ctx.unit] = status("running", pid=FAKE_PID)
        return Handle(driver=self.name, pid=FAKE_PID, create_time=0.0, started_at=1.0,
                      invocation_id=ctx.invocation_id, unit=ctx.unit)

    def signal(self, handle: Handle, signum: int) -> None:
        self.calls.append(f"signal {handle.unit} {signum}")

    def status(self, name: str) -> ServiceStatus:
        return self.statuses([name])[name]

    def statuses(self, names: Sequence[str]) -> Dict[str, ServiceStatus]:
        return {n: self.now.get(n, status("stopped")).copy() for n in names}

    def stop(self, name: str, timeout: Optional[float] = None) -> ServiceStatus:
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
