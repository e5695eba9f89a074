"""The runner for units whose driver's service manager supervises them (Driver=systemd):
systemd runs them, the agent asks.

systemd forks, restarts by Restart=, limits and reaps these units itself; doing any of
that here as well would fight it. So for them the agent only: starts and stops
through the driver (``systemctl`` blocks ~100 ms, so in a worker thread, never on the
event loop), and polls systemd's view about once a second - one ``systemctl show`` for
all of them (``SystemdDriver.statuses``) - reporting each change of state, pid, restart
count or error. systemd's own counters are the truth: ``restarts`` is its NRestarts.

A unit that systemd shows stopped while fleetd had not asked for a stop ran out on its
own: reported ``exited``, as the driver's notes ask (systemd unloads such a unit and
forgets the run's result).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, Callable, Dict, Optional, Set, TypeVar

from fleetd import protocol
from fleetd.agent.managed import Managed
from fleetd.agent.runner import Port, finish
from fleetd.drivers.base import Driver, DriverError, Handle, ServiceStatus, SupervisingDriver

T = TypeVar("T")

log = logging.getLogger("fleet-agent")

POLL_S = 1.0


class SystemdUnits:
    """``port``: what it may ask of the supervisor; ``driver``: the host's systemd
    driver (None where systemd does not run: then no unit of this kind is started);
    ``poll_s``: how often systemd's view is asked for."""

    def __init__(self, port: Port, driver: Optional[SupervisingDriver],
                 poll_s: float = POLL_S) -> None:
        self.port = port
        self.driver = driver
        self.poll_s = poll_s
        self._poller: Optional[asyncio.Task[None]] = None

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _ensure_polling(self) -> None:
        if self.driver is not None and (self._poller is None or self._poller.done()):
            self._poller = asyncio.ensure_future(self._poll())

    # --- start / stop / forget (under the unit's lock) -------------------------------------
    async def start(self, m: Managed, driver: Driver, automatic: bool = False) -> None:
        m.cancel_timers()
        m.error = None
        ctx = self.port.context(m)
        try:
            handle = await self._call(driver.start, m.config, ctx, m.command_index)
            st = await self._call(self._status, m.name)
        except DriverError as exc:
            log.warning("%s: cannot start: %s", m.name, exc)
            finish(self.port, m, protocol.FAILED, str(exc))
            return
        m.handle = handle
        m.gone.clear()
        self._apply(m, st)
        self.port.save(m)
        self.port.report(m)
        if m.state in (protocol.EXITED, protocol.FAILED):
            m.gone.set()
        self._ensure_polling()

    def _own(self, driver: Optional[Driver]) -> SupervisingDriver:
        """``driver``, the one this runner was given (a unit's driver is its runner's)."""
        assert driver is not None and driver is self.driver
        return self.driver

    async def stop(self, m: Managed, driver: Optional[Driver]) -> None:
        sd = self._own(driver)
        m.cancel_timers()
        m.state = protocol.STOPPING
        self.port.report(m)
        try:
            st = await self._call(sd.stop, m.name, m.config.get("timeout_stop_s"))
            m.exit_status = st.get("exit_status")
        except DriverError as exc:
            m.error = str(exc)
            log.warning("%s: %s", m.name, exc)
        m.gone.set()
        m.state = protocol.STOPPED
        self.port.delete_record(m.name)
        self.port.report(m)

    async def forget(self, m: Managed, driver: Optional[Driver]) -> None:
        sd = self._own(driver)
        try:
            await self._call(sd.forget, m.name, m.config.get("timeout_stop_s"))
        except DriverError as exc:
            log.warning("%s: cannot remove it from systemd: %s", m.name, exc)

    # --- recovery ------------------------------------------------------------------------------
    def end_run(self, m: Managed, driver: Driver, outcome: str, why: str) -> bool:
        """Never: systemd ends its units' runs (WatchdogSec=, its own checks)."""
        return False

    def adopt(self, m: Managed, driver: Driver, handle: Handle) -> bool:
        """A unit systemd still has after an agent restart: take systemd's view of it.
        (It has no cgroup of ours: False.)"""
        assert self.driver is not None
        m.handle = handle
        m.gone.clear()
        try:
            self._apply(m, self._status(m.name))
        except DriverError as exc:
            m.state, m.error = protocol.FAILED, str(exc)
        if m.state in (protocol.EXITED, protocol.FAILED, protocol.STOPPED):
            m.gone.set()
        log.info("%s: re-adopted from systemd (%s)", m.name, m.state)
        return False

    def recovered(self, records: Dict[str, Any], desired: Set[str],
                  adopted: Set[str]) -> None:
        """Forget units this agent installed in systemd that it neither wants nor has a
        record of (a record lost in a crash must not leave a unit running unseen)."""
        if self.driver is None:
            return
        for name in self.driver.installed():
            if name not in desired and name not in records:
                log.warning("%s: installed in systemd but not desired: removing it", name)
                self.port.spawn(self._call(self.driver.forget, name))
        self._ensure_polling()

    # --- polling ------------------------------------------------------------------------------
    def _status(self, name: str) -> ServiceStatus:
        assert self.driver is not None
        return self.driver.status(name)

    def _apply(self, m: Managed, st: ServiceStatus) -> None:
        state = st["state"]
        if state == protocol.STOPPED and m.state == protocol.RUNNING:
            state = protocol.EXITED  # it ended on its own: nobody asked systemd to stop it
        m.state = state
        m.restarts = int(st.get("restarts") or 0)
        m.error = st.get("error")
        m.exit_status = st.get("exit_status")
        m.usage = st.get("usage") or {}
        if m.handle is not None:
            m.handle = dataclasses.replace(m.handle, pid=int(st.get("pid") or 0))

    async def _poll(self) -> None:
        sd = self.driver
        assert sd is not None
        while True:
            await asyncio.sleep(self.poll_s)
            watched = [m for m in self.port.all_units()
                       if m.spec["driver"] == sd.name
                       and m.handle is not None and m.state != protocol.STOPPING
                       and not m.gone.is_set()]
            if not watched:
                continue
            try:
                found = await self._call(sd.statuses, [m.name for m in watched])
            except DriverError as exc:
                log.warning("systemd: %s", exc)
                continue
            for m in watched:
                st = found.get(m.name)
                if st is None or m.state == protocol.STOPPING or m.gone.is_set():
                    continue
                before = (m.state, m.handle.pid if m.handle else 0, m.restarts, m.error)
                self._apply(m, st)
                after = (m.state, m.handle.pid if m.handle else 0, m.restarts, m.error)
                if before == after:
                    continue
                self.port.report(m)
                if m.state in (protocol.EXITED, protocol.FAILED, protocol.STOPPED):
                    m.gone.set()
                    self.port.converge_later(m.name)
