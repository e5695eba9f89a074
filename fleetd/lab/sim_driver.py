"""The one fake in a simulated machine: its driver. A program "runs" without a process.

A simulated machine (fleetd.lab.sim_host) runs the real agent - its daemon, supervisor,
specs, state directory, heartbeats and reports - with this driver in place of the host's.
It plays a host service manager (``supervises_itself``, as systemd does), so the agent
drives it through its real systemd runner (fleetd.agent.systemd_units): start and stop
through the driver, poll its statuses about once a second, report each change. A process
driver could not be faked honestly: the process runner watches pids and cgroups.

It is registered under the name ``exec`` (a unit's default driver), so ordinary unit
files run on a simulated machine unchanged. What it adds for the simulator:

- ``starts``/``stops``: how often each unit was started and stopped here, the evidence
  that a fleetd restart restarted nothing;
- ``fail(unit)``: the program "exits" non-zero; the agent's next poll sees the unit
  ``failed`` (systemd's ActiveState after a failed run), reports it, and fleetd's
  reschedule policy takes over, as on a real host.

Called from the agent's worker threads (the runner keeps blocking calls off the event
loop) and from the simulator's loop: every state change holds ``_lock``.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from fleetd.drivers.base import HOST_SUPERVISED, Handle, ServiceStatus, StartContext
from fleetd.wire.unitspec import UnitConfig

NAME = "exec"  # the default Driver=: unit files run here unchanged
PID_BASE = 100_000  # fake pids, counted up per start: a restart shows a new pid


def status(state: str, pid: Optional[int] = None, restarts: int = 0,
           exit_status: Optional[int] = None, error: Optional[str] = None) -> ServiceStatus:
    """One unit as a host service manager reports it."""
    return {"state": state, "pid": pid, "restarts": restarts, "exit_status": exit_status,
            "error": error, "known": True, "active_state": state, "sub_state": "",
            "result": "success" if error is None else "exit-code"}


class SimDriver:
    """A simulated host service manager for one machine."""

    name = NAME
    capabilities = HOST_SUPERVISED

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: Dict[str, ServiceStatus] = {}
        self._next_pid = PID_BASE
        self.starts: Dict[str, int] = {}
        self.stops: Dict[str, int] = {}

    def _state(self, name: str) -> Optional[str]:
        """The unit's state now (None: never started here, or forgotten); hold _lock."""
        now = self._now.get(name)
        return None if now is None else now["state"]

    # --- the driver protocol (fleetd.drivers.base.SupervisingDriver) ----------------------
    def start(self, config: UnitConfig, ctx: StartContext, command_index: int = 0) -> Handle:
        with self._lock:
            self.starts[ctx.unit] = self.starts.get(ctx.unit, 0) + 1
            self._next_pid += 1
            self._now[ctx.unit] = status("running", pid=self._next_pid)
            return Handle(driver=self.name, pid=self._next_pid, create_time=time.time(),
                          started_at=time.time(), invocation_id=ctx.invocation_id,
                          unit=ctx.unit)

    def signal(self, handle: Handle, signum: int) -> None:
        """Nothing runs to signal: a simulated program ends only by stop or ``fail``."""

    def status(self, name: str) -> ServiceStatus:
        return self.statuses([name])[name]

    def statuses(self, names: Sequence[str]) -> Dict[str, ServiceStatus]:
        with self._lock:
            return {n: dict(self._now.get(n) or status("stopped"))  # type: ignore[misc]
                    for n in names}

    def stop(self, name: str, timeout: Optional[float] = None) -> ServiceStatus:
        with self._lock:
            if self._state(name) == "running":
                self.stops[name] = self.stops.get(name, 0) + 1
            self._now[name] = status("stopped")
            return dict(self._now[name])  # type: ignore[return-value]

    def forget(self, name: str, timeout: Optional[float] = None) -> None:
        with self._lock:
            if self._state(name) == "running":
                self.stops[name] = self.stops.get(name, 0) + 1
            self._now.pop(name, None)

    def installed(self) -> List[str]:
        with self._lock:
            return list(self._now)

    def recover(self, record: Dict[str, Any]) -> Optional[Handle]:
        """A program a previous agent of this machine started, if it still "runs" (the
        driver outlives a killed agent only within one simulator process)."""
        handle = Handle.from_record(record)
        with self._lock:
            return handle if self._state(handle.unit) == "running" \
                else None

    # --- the simulator's levers -----------------------------------------------------------
    def fail(self, unit: str, exit_status: int = 1) -> bool:
        """The unit's program exits with ``exit_status``; False if it was not running."""
        with self._lock:
            if self._state(unit) != "running":
                return False
            self._now[unit] = status("failed", exit_status=exit_status,
                                     error=f"exited with status {exit_status} (simulated)")
            return True

    def running(self) -> List[str]:
        with self._lock:
            return sorted(n for n, s in self._now.items() if s["state"] == "running")
