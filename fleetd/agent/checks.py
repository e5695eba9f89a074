"""A unit's [X-Check] wired to its run: one HealthChecker per run of the program, its
verdicts reported, and a failing one with OnFailure=restart ending the run.

An exec check runs as the unit's program does: the same environment (User='s
$USER/$HOME, the run's own FLEET_INVOCATION_ID, as systemd gives a unit's every
process) and the same preexec (cgroup, LimitNOFILE=, User=), from the driver.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Dict, Optional

from fleetd.agent import restart
from fleetd.agent.health import HealthChecker, acts_on_failing
from fleetd.agent.managed import Managed
from fleetd.drivers.base import DriverError, Handle, ProcessDriver, StartContext
from fleetd.wire.unitspec import HEALTH_UNKNOWN

log = logging.getLogger("fleet-agent")

# (unit, its driver, outcome, why) -> whether a run was ended
EndRun = Callable[[Managed, ProcessDriver, str, str], bool]


class UnitChecks:
    """``report``: send a unit's status; ``end_run``: end its run for the agent's reason."""

    def __init__(self, report: Callable[[Managed], None], end_run: EndRun) -> None:
        self._report = report
        self._end_run = end_run

    def start(self, m: Managed, handle: Handle, driver: ProcessDriver,
              ctx: StartContext) -> None:
        """Start the check loop for this run of the program (none without a check)."""
        self.stop(m)
        check = m.config.get("check")
        if not check:
            return
        env: Optional[Dict[str, str]] = None
        preexec: Optional[Callable[[], None]] = None
        if check.get("type") == "exec":
            run_ctx = dataclasses.replace(ctx, invocation_id=handle.invocation_id)
            try:
                env, preexec = driver.as_unit(m.config, run_ctx)
            except DriverError as exc:
                log.warning("%s: exec check runs without the unit's settings: %s", m.name, exc)
        def verdict(health: str, detail: str) -> None:
            self._verdict(m, handle, driver, health, detail)

        m.checker = HealthChecker(m.name, check, verdict, env=env, preexec=preexec)
        m.checker.start(since_start_s=max(time.time() - handle.started_at, 0.0))

    def stop(self, m: Managed) -> None:
        if m.checker is not None:
            m.checker.stop()
            m.checker = None
        m.health = HEALTH_UNKNOWN

    def _verdict(self, m: Managed, handle: Handle, driver: ProcessDriver, health: str,
                 detail: str) -> None:
        """A health verdict changed: report it; a failing one with OnFailure=restart ends
        the program as a watchdog timeout would, and Restart= decides what follows."""
        if m.handle is not handle or m.gone.is_set():
            return
        m.health = health
        log.info("%s: health %s (%s)", m.name, health, detail)
        self._report(m)
        if health == "failing" and acts_on_failing(m.config.get("check")):
            self._end_run(m, driver, restart.WATCHDOG, f"health check failing: {detail}")
