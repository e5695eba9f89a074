"""Driver=systemd units in the supervisor: systemd runs them, the agent asks.

systemd forks, restarts by Restart=, limits and reaps these units itself; doing any of
that here as well would fight it. So for them the supervisor only: starts and stops
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
from typing import TYPE_CHECKING, Any, Dict, Optional

from fleetd import protocol
from fleetd.agent.managed import Managed
from fleetd.drivers.base import Driver, DriverError, Handle
from fleetd.drivers.systemd import SystemdDriver

if TYPE_CHECKING:
    from fleetd.agent.supervisor import Supervisor

log = logging.getLogger("fleet-agent")

POLL_S = 1.0


class SystemdUnits:
    def __init__(self, sup: Supervisor, driver: Optional[SystemdDriver]) -> None:
        self.sup = sup
        self.driver = driver
        self._poller: Optional[asyncio.Task[None]] = None

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _ensure_polling(self) -> None:
        if self.driver is not None and (self._poller is None or self._poller.done()):
            self._poller = asyncio.ensure_future(self._poll())

    # --- start / stop / forget (under the unit's lock) -------------------------------------
    async def start(self, m: Managed, driver: Driver) -> None:
        ctx = self.sup._context(m)
        try:
            handle = await self._call(driver.start, m.config, ctx, m.command_index)
            st = await self._call(self._status, m.name)
        except DriverError as exc:
            log.warning("%s: cannot start: %s", m.name, exc)
            self.sup._finish(m, protocol.FAILED, str(exc))
            return
        m.handle = handle
        m.gone.clear()
        self._apply(m, st)
        self.sup.save(m)
        self.sup.report(m)
        if m.state in (protocol.EXITED, protocol.FAILED):
            m.gone.set()
        self._ensure_polling()

    async def stop(self, m: Managed, driver: Driver) -> None:
        assert isinstance(driver, SystemdDriver)
        m.state = protocol.STOPPING
        self.sup.report(m)
        try:
            st = await self._call(driver.stop, m.name, m.config.get("timeout_stop_s"))
            m.exit_status = st.get("exit_status")
        except DriverError as exc:
            m.error = str(exc)
            log.warning("%s: %s", m.name, exc)
        m.gone.set()
        m.state = protocol.STOPPED
        self.sup.state.delete_record(m.name)
        self.sup.report(m)

    async def forget(self, m: Managed, driver: Driver) -> None:
        assert isinstance(driver, SystemdDriver)
        try:
            await self._call(driver.forget, m.name, m.config.get("timeout_stop_s"))
        except DriverError as exc:
            log.warning("%s: cannot remove it from systemd: %s", m.name, exc)

    # --- recovery ------------------------------------------------------------------------------
    def adopt(self, m: Managed, handle: Handle) -> None:
        """A unit systemd still has after an agent restart: take systemd's view of it."""
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

    def recovered(self, records: Dict[str, Any]) -> None:
        """Forget units this agent installed in systemd that it neither wants nor has a
        record of (a record lost in a crash must not leave a unit running unseen)."""
        if self.driver is None:
            return
        for name in self.driver.installed():
            if name not in self.sup.desired and name not in records:
                log.warning("%s: installed in systemd but not desired: removing it", name)
                self.sup.spawn(self._call(self.driver.forget, name))
        self._ensure_polling()

    # --- polling ------------------------------------------------------------------------------
    def _status(self, name: str) -> Dict[str, Any]:
        assert self.driver is not None
        return self.driver.status(name)

    def _apply(self, m: Managed, st: Dict[str, Any]) -> None:
        state = st["state"]
        if state == protocol.STOPPED and m.state == protocol.RUNNING:
            state = protocol.EXITED  # it ended on its own: nobody asked systemd to stop it
        m.state = state
        m.restarts = int(st.get("restarts") or 0)
        m.error = st.get("error")
        m.exit_status = st.get("exit_status")
        if m.handle is not None:
            m.handle = dataclasses.replace(m.handle, pid=int(st.get("pid") or 0))

    async def _poll(self) -> None:
        sd = self.driver
        assert sd is not None
        while True:
            await asyncio.sleep(POLL_S)
            watched = [m for m in self.sup.units.values()
                       if self.sup.drivers.get(m.spec["driver"]) is sd
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
                self.sup.report(m)
                if m.state in (protocol.EXITED, protocol.FAILED, protocol.STOPPED):
                    m.gone.set()
                    self.sup.spawn(self.sup.converge(m.name))
