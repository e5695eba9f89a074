"""The composition root: registry, engine, machine sessions, services and the API,
wired once.

Everything that is not wiring lives elsewhere: decisions in engine/, storage in
registry/, host conversations in session.py, what a request may do in service/, HTTP in
http/. The registry and the lease are given (``main.open_daemon`` builds the defaults:
SQLite and a file lease in the state directory), so a test builds a Daemon on any
registry, without root.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import time
from typing import Dict, List, Optional, Protocol

from aiohttp import web

from fleetd import protocol
from fleetd.daemon.changes import Changes
from fleetd.daemon.config import Config
from fleetd.daemon.http.request import Services
from fleetd.daemon.http.server import make_app
from fleetd.daemon.listeners import serve
from fleetd.daemon.service.machines import Machines
from fleetd.daemon.service.placement import EngineView
from fleetd.daemon.service.units import Units
from fleetd.daemon.session import MachineSession, TransportFactory, silence_window
from fleetd.engine import liveness
from fleetd.engine.loop import Engine
from fleetd.registry.base import MachineRecord, Registry, RegistryError
from fleetd.transport.ssh import to_machine
from fleetd.units.compiled import CompiledUnits
from fleetd.wire import messages
from fleetd.wire.unitspec import UnitSpec

log = logging.getLogger("fleetd")


class Lease(Protocol):
    """What makes this fleetd the one engine for its registry (engine/leadership.py):
    held from before the Daemon is built; released when it stops."""

    def release(self) -> None: ...


def dump_tasks() -> None:
    """SIGUSR1: every asyncio task's stack into the log, to see what fleetd waits on."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        task.print_stack(limit=15, file=out)
    log.warning("asyncio tasks on SIGUSR1:\n%s", out.getvalue())


class Daemon:
    """One fleetd: given its registry and the lease on it, it owns both from here on
    (``run`` closes the registry and releases the lease when it stops)."""

    def __init__(self, config: Config, registry: Registry, lease: Lease,
                 transport_factory: TransportFactory = to_machine,
                 epoch: int = messages.EPOCH) -> None:
        """``epoch``: this fleetd's leadership term, which every session's hello says
        (fleetd.protocol: agents refuse an older one); one fleetd on SQLite is 0."""
        self.config = config
        self.epoch = epoch
        self.lease = lease
        self.registry = registry
        self.transport_factory = transport_factory
        self.changes = Changes()
        self.sessions: Dict[str, MachineSession] = {}
        self.compiled = CompiledUnits()  # one cache of unit files: engine and API
        self.engine = Engine(self.registry, self._push, lambda: self.changed(False),
                             heard=self._heard, skew_s=silence_window(config.heartbeat_s),
                             units=self.compiled, epoch=epoch)
        self.started_at = time.time()
        self.units = Units(self.registry, EngineView(self.engine), self.changes,
                           self.changed, self.sessions, self.compiled)
        self.machines = Machines(self.registry, self.changes, self.changed, self.sessions,
                                 self._open_session, self._close_session)
        self._tasks: List[asyncio.Task[None]] = []

    def api(self) -> web.Application:
        """The HTTP API over this daemon's services (listeners.serve serves it)."""
        return make_app(Services(self.units, self.machines, self.started_at,
                                 self.config.idle_timeout_s), self.config.token)

    # --- events ------------------------------------------------------------------------
    def changed(self, placement_relevant: bool = True) -> None:
        """Something changed: wake waiters, and the engine if placements may move."""
        self.changes.bump()
        if placement_relevant:
            self.engine.wake()

    def _heard(self, machine: str) -> Optional[float]:
        """When this fleetd last heard the machine's agent, as silence is counted: from
        this fleetd's start at the earliest. The last_seen a restarted fleetd finds in
        the registry is as old as the last connect of the one before it, and while no
        fleetd ran, nobody was listening; liveness (a whole TTL before a machine's units
        move) and fencing (the agent heard the old fleetd until it died) both need the
        later of the two."""
        session = self.sessions.get(machine)
        if session is None or session.last_seen is None:
            return None
        return max(session.last_seen, self.started_at)

    def _report_matters(self, unit: str, state: str) -> bool:
        """Does an agent's report about ``unit`` bear on placement? A failure does (the
        reschedule policy), and so does any news of a unit in a drain's hand-off."""
        return state == protocol.FAILED or unit in self.engine.snapshot().watching

    def _push(self, machine: str, specs: List[UnitSpec]) -> None:
        session = self.sessions.get(machine)
        if session is not None:
            session.push(specs)

    # --- machines --------------------------------------------------------------------
    def _open_session(self, machine: MachineRecord) -> None:
        session = MachineSession(machine, self.registry, self.transport_factory, self.changed,
                                 self.config.heartbeat_s, epoch=self.epoch)
        session.report_matters = self._report_matters
        self.sessions[machine.name] = session
        session.start()

    async def _close_session(self, name: str) -> None:
        session = self.sessions.pop(name, None)
        if session is not None:
            await session.stop()

    async def _liveness(self) -> None:
        """Judge every machine by how long its agent has been silent (engine/liveness);
        a machine that becomes lost, or comes back, wakes the engine. Silence counts as
        ``_heard`` says."""
        tick = min(self.config.heartbeat_s, 0.5)
        while True:
            await asyncio.sleep(tick)
            now = time.time()
            for name, session in list(self.sessions.items()):
                verdict = liveness.assess(session.connected, self._heard(name), now,
                                          self.config.machine_ttl_s)
                if verdict is None:
                    continue
                state, why = verdict
                current = session.machine.state
                if state == current or (state == liveness.UNREACHABLE and current == "error"):
                    continue
                if state == liveness.UNREACHABLE and current != liveness.UP:
                    continue  # the session says why it is down; do not overwrite it
                if state == liveness.LOST:
                    last = session.machine.error
                    why = f"{why}; last error: {last}" if last and current != "up" else why
                    log.warning("machine %s lost: %s", name, why)
                try:
                    await self.registry.update_machine(name, state=state, error=why,
                                                       epoch=self.epoch)
                except RegistryError as exc:  # judged again at the next tick
                    log.warning("cannot record that machine %s is %s: %s", name, state, exc)
                    continue
                session.machine = self.registry.get_machine(name) or session.machine
                self.changed()

    # --- life ------------------------------------------------------------------------
    async def run(self, ready: Optional[asyncio.Future[None]] = None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        for machine in self.registry.list_machines():
            if machine.state == liveness.UP:  # as the fleetd before this one left it
                await self.registry.update_machine(machine.name, state=liveness.UNREACHABLE,
                                                   error="not heard since fleetd started",
                                                   epoch=self.epoch)
                machine = self.registry.get_machine(machine.name) or machine
            self._open_session(machine)
        self._tasks.append(asyncio.ensure_future(self.engine.run()))
        self._tasks.append(asyncio.ensure_future(self._liveness()))
        self.engine.wake()
        runner = await serve(self.api(), self.config)
        log.info("fleetd ready: %d machines, %d units, API on %s%s",
                 len(self.sessions), len(self.registry.list_units()), self.config.socket,
                 f" and {self.config.listen}" if self.config.listen else "")
        if ready is not None:
            ready.set_result(None)
        try:
            await stop.wait()
        finally:
            log.info("fleetd stopping; agents keep their units running")
            await runner.cleanup()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*(s.stop() for s in self.sessions.values()),
                                 return_exceptions=True)
            await self.registry.close()
            self.lease.release()
