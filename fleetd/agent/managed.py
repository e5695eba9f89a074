"""One unit on this host, as the supervisor keeps it: spec, program, restart history."""

from __future__ import annotations

import asyncio
from typing import Dict, Optional, Tuple

from fleetd import protocol
from fleetd.agent import reconciler
from fleetd.agent.health import HealthChecker
from fleetd.agent.restart import StartLimit
from fleetd.drivers.base import Handle, Spare
from fleetd.wire.unitspec import GENERATION, HEALTH_UNKNOWN, UnitConfig, UnitSpec, UnitStatus


class Managed:
    """A unit on this host: its spec, its program (if any) and its last outcome.

    ``gone`` is set while no main process runs (also between an exit and the restart
    that follows it). ``handle`` stays after the program ended, so that a late watcher
    of an earlier program can tell it is stale (``m.handle is not handle``)."""

    def __init__(self, spec: UnitSpec, state: str = protocol.STOPPED) -> None:
        self.spec = spec
        self.state = state
        self.handle: Optional[Handle] = None
        self.exit_status: Optional[int] = None
        self.restarts = 0  # automatic restarts of this spec on this host (NRestarts)
        self.streak = 0  # consecutive ones, for the backoff (restart.delay)
        self.error: Optional[str] = None
        # counters of its cgroup from its service manager, when that keeps the cgroup
        # (Driver=systemd: systemctl show's MemoryCurrent, ...); the agent reads its own
        self.usage: Dict[str, int] = {}
        self.command_index = 0
        self.gone = asyncio.Event()
        self.gone.set()
        self.limiter = StartLimit.from_config(self.config)
        self.started_mono = 0.0  # loop time the current program started
        self.deadline: Optional[float] = None  # loop time TimeoutStartSec= runs out
        self.oom_before = 0  # the cgroup's OOM kill count when the program started
        self.forced: Optional[Tuple[str, str]] = None  # (result, why) if we ended it
        self.restart_timer: Optional[asyncio.TimerHandle] = None
        self.restart_pending = False
        self.timeout_timer: Optional[asyncio.TimerHandle] = None
        self.health = HEALTH_UNKNOWN  # the [X-Check] verdict for the current program
        self.checker: Optional[HealthChecker] = None
        # a process waiting in the unit's cgroups to become its next program (never its
        # main process until then): fleetd.agent.process_units keeps it
        self.spare: Optional[Spare] = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def config(self) -> UnitConfig:
        return self.spec.get("config") or {}

    @property
    def oneshot(self) -> bool:
        return self.config.get("type") == "oneshot"

    def cancel_timers(self) -> None:
        for timer in (self.restart_timer, self.timeout_timer):
            if timer is not None:
                timer.cancel()
        self.restart_timer = self.timeout_timer = None
        self.restart_pending = False

    def status(self) -> UnitStatus:
        h = self.handle
        running = h is not None and h.pid > 0 and not self.gone.is_set()
        return protocol.unit_status(
            self.name, self.spec["hash"], self.state,
            pid=h.pid if h is not None and running and self.state in reconciler.ACTIVE
            else None,
            started_at=h.started_at if h else None,
            exit_status=self.exit_status, restarts=self.restarts, error=self.error,
            generation=self.spec.get("generation", GENERATION), health=self.health,
        )
