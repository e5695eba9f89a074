"""The composition root: registry, engine, machine sessions and the API, wired once.

Everything that is not wiring lives elsewhere: decisions in engine/, storage in
registry/, host conversations in session.py, HTTP in api.py.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import time
from typing import Any, Dict, List, Optional, Set

from fleetd import protocol
from fleetd.bootstrap import machines as bootstrap
from fleetd.daemon.changes import Changes
from fleetd.daemon.config import Config
from fleetd.daemon.session import MachineSession, TransportFactory, silence_window
from fleetd.engine import liveness
from fleetd.engine.leadership import FileLease
from fleetd.engine.loop import Engine
from fleetd.registry.base import MachineRecord
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.transport.base import TransportError
from fleetd.transport.ssh import to_machine

log = logging.getLogger("fleetd")

REMOVE_DRAIN_S = 30.0  # how long machine removal waits for the host to stop its units


def dump_tasks() -> None:
    """SIGUSR1: every asyncio task's stack into the log, to see what fleetd waits on."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        task.print_stack(limit=15, file=out)
    log.warning("asyncio tasks on SIGUSR1:\n%s", out.getvalue())


class Daemon:
    def __init__(self, config: Config, transport_factory: TransportFactory = to_machine):
        self.config = config
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        self.lease = FileLease(os.path.join(config.state_dir, "fleetd.lock"))
        self.lease.acquire()
        self.registry = SqliteRegistry(os.path.join(config.state_dir, "registry.db"))
        self.transport_factory = transport_factory
        self.changes = Changes()
        self.sessions: Dict[str, MachineSession] = {}
        # machine names and (address, port)s whose agent is being installed right now:
        # one install at a time each, and none registered twice meanwhile
        self.installing: Set[object] = set()
        self.engine = Engine(self.registry, self._push, lambda: self.changed(False),
                             heard=self._heard, skew_s=silence_window(config.heartbeat_s))
        self.started_at = time.time()
        self._tasks: List[asyncio.Task[None]] = []

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
        return state == protocol.FAILED or unit in self.engine.watching

    def _push(self, machine: str, specs: List[Dict[str, Any]]) -> None:
        session = self.sessions.get(machine)
        if session is not None:
            session.push(specs)

    # --- machines --------------------------------------------------------------------
    def _open_session(self, machine: MachineRecord) -> None:
        session = MachineSession(machine, self.registry, self.transport_factory, self.changed,
                                 self.config.heartbeat_s)
        session.report_matters = self._report_matters
        self.sessions[machine.name] = session
        session.start()

    def add_machine(self, machine: MachineRecord) -> None:
        self.registry.add_machine(machine)
        self._open_session(machine)
        self.changed()

    async def remove_machine(self, name: str, purge: bool = False) -> Dict[str, Any]:
        """Stop the host's units (its desired set becomes empty), then forget it. Where
        fleetd installed the agent (fleetd.bootstrap), it then stops the agent there -
        after the session, which would start it again - and with ``purge`` removes what
        it installed. A host that cannot be reached is forgotten all the same: the answer
        says what was left there."""
        machine = self.registry.get_machine(name)
        session = self.sessions.get(name)
        if session is not None and session.connected:
            session.push([])
            deadline = time.monotonic() + REMOVE_DRAIN_S
            while time.monotonic() < deadline and any(
                o.machine == name for o in self.registry.list_observed()
            ):
                await self.changes.wait(1.0)
        left = sorted(o.unit for o in self.registry.list_observed() if o.machine == name)
        self.registry.remove_machine(name)
        session = self.sessions.pop(name, None)
        if session is not None:
            await session.stop()
        self.changed()
        result: Dict[str, Any] = {"removed": name}
        if left:
            result["units_left"] = left
        if machine is None or bootstrap.installed_by_fleetd(machine) is None:
            return result
        try:
            removed = await bootstrap.uninstall_from(machine, purge)
        except TransportError as exc:
            result["warning"] = (f"the agent on {bootstrap.where(machine)} may still run"
                                 f"{' and its files remain' if purge else ''}: {exc}")
            return result
        except bootstrap.BootstrapError as exc:
            result["warning"] = str(exc)
            return result
        result.update(agent_stopped=removed.stopped, purged=removed.purged)
        if removed.left_running:
            result["units_left"] = sorted({*left, *removed.left_running})
        return result

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
                self.registry.update_machine(name, state=state, error=why)
                session.machine = self.registry.get_machine(name) or session.machine
                self.changed()

    # --- life ------------------------------------------------------------------------
    async def run(self, ready: Optional[asyncio.Future[None]] = None) -> None:
        from fleetd.daemon.listeners import serve

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        for machine in self.registry.list_machines():
            if machine.state == liveness.UP:  # as the fleetd before this one left it
                self.registry.update_machine(machine.name, state=liveness.UNREACHABLE,
                                             error="not heard since fleetd started")
                machine = self.registry.get_machine(machine.name) or machine
            self._open_session(machine)
        self._tasks.append(asyncio.ensure_future(self.engine.run()))
        self._tasks.append(asyncio.ensure_future(self._liveness()))
        self.engine.wake()
        runner = await serve(self)
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
            self.registry.close()
            self.lease.release()
