"""The composition root: registry, engine, machine sessions, services and the API,
wired once.

Everything that is not wiring lives elsewhere: decisions in engine/, storage in
registry/, host conversations in session.py, what a request may do in service/, HTTP in
http/. The registry and the leader lock are given (``main.open_daemon`` builds them from
the configuration: SQLite and a FileLock in the state directory, or etcd and an
EtcdLock), so a test builds a Daemon on any registry and lock, without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

from aiohttp import web

from fleetd import __version__, protocol
from fleetd.daemon import usage
from fleetd.daemon.audit import AUDIT_FILE, AuditLog
from fleetd.daemon.changes import Changes
from fleetd.daemon.config import Config
from fleetd.daemon.http.request import Services
from fleetd.daemon.http.server import make_app
from fleetd.daemon.listeners import serve
from fleetd.daemon.metrics import FleetState, Metrics
from fleetd.daemon.service.machines import Machines
from fleetd.daemon.service.placement import EngineView
from fleetd.daemon.service.secrets import Secrets
from fleetd.daemon.service.units import Units
from fleetd.daemon.session import MachineSession, TransportFactory, silence_window
from fleetd.daemon.tokens import TOKENS_FILE, TokenStore
from fleetd.engine import liveness, transitions
from fleetd.engine.events import Bus
from fleetd.engine.leader import Leadership, Timing
from fleetd.engine.leadership import LeaderLock
from fleetd.engine.loop import Engine
from fleetd.registry.base import MachineRecord, NotLeader, Registry, RegistryError
from fleetd.transport.ssh import to_machine
from fleetd.units.compiled import CompiledUnits
from fleetd.wire import names
from fleetd.wire.unitspec import UnitSpec

log = logging.getLogger("fleetd")
# how long a new term's engine waits for the sessions' first connects before placing:
# an SSH connect and hello take ~0.1 s in the lab and ~1.1 s to a VM; a host that does
# not answer by then is placed around, as it would be any time
SETTLE_S = 2.0

ServersFn = Callable[[], Awaitable[List[Dict[str, Any]]]]


def dump_tasks() -> None:
    """SIGUSR1: every asyncio task's stack into the log, to see what fleetd waits on."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        task.print_stack(limit=15, file=out)
    log.warning("asyncio tasks on SIGUSR1:\n%s", out.getvalue())


class Daemon:
    """One fleetd: given its registry and the leader lock on it, it owns both from here on
    (``run`` closes the registry and lets the lock go when it stops).

    Every fleetd serves the whole API; the one holding the lock also runs the machine
    sessions, liveness and the engine's writes (a term, ``_elected``). A follower's
    engine decides without writing or pushing, so its API answers and waits as the
    leader's would (``Engine.leading``); it learns what the others wrote through the
    registry's ``on_change``. One fleetd on SQLite takes its FileLock before it serves
    and refuses to start when another holds it (``Timing(patient=False)``).
    """

    def __init__(self, config: Config, registry: Registry, lock: LeaderLock,
                 transport_factory: TransportFactory = to_machine,
                 timing: Optional[Timing] = None,
                 servers: Optional[ServersFn] = None) -> None:
        """``servers``: what ``list-servers`` shows beyond this fleetd (etcd: the roster
        and the members); None: this fleetd alone."""
        self.config = config
        self.epoch: Optional[int] = None  # this fleetd's leadership term, while it leads
        self.term_started: Optional[float] = None
        self.registry = registry
        self.transport_factory = transport_factory
        self.changes = Changes()
        self.sessions: Dict[str, MachineSession] = {}
        self.compiled = CompiledUnits()  # one cache of unit files: engine and API
        self.secrets = Secrets(registry, config.secrets_key_path, self.changed, self.compiled)
        self.engine = Engine(self.registry, self._push, lambda: self.changed(False),
                             heard=self._heard, skew_s=silence_window(config.heartbeat_s),
                             units=self.compiled, secrets=self.secrets)
        self.engine.leading = False
        self.events = Bus()  # what happened, with why: fleetctl events (engine/events.py)
        self.engine.publish = self.events.publish
        self.metrics = Metrics()  # GET /metrics (daemon/metrics.py)
        self.metrics.watch(self._fleet_state, lambda: usage.gather(self.sessions))
        self.events.listeners.append(self.metrics.event)
        self.engine.timed = self.metrics.engine_pass
        self.leadership = Leadership(lock, self._lead, self._deposed, timing)
        self._beginning: Optional[asyncio.Task[None]] = None  # _elected, run by _lead
        self.started_at = time.time()
        self._servers = servers
        self.units = Units(self.registry, EngineView(self.engine), self.changes,
                           self.changed, self.sessions, self.compiled)
        self.machines = Machines(self.registry, self.changes, self.changed, self.sessions,
                                 self._open_session, self._close_session)
        self.units.following = self.machines.following = self._following
        self._term_tasks: List[asyncio.Task[None]] = []
        self._elected_once = asyncio.Event()
        # run beside the API for fleetd's life (the roster entry), and closed after the
        # registry at the end (the etcd client they share)
        self.companions: List[Callable[[], Awaitable[None]]] = []
        # API tokens: a file in the state directory; on etcd, etcd's (open_etcd_daemon)
        self.tokens = TokenStore(os.path.join(config.state_dir, TOKENS_FILE))
        self.closers: List[Callable[[], Awaitable[None]]] = []
        registry.on_change(self._changed_elsewhere)

    def api(self) -> web.Application:
        """The HTTP API over this daemon's services (listeners.serve serves it)."""
        return make_app(Services(self.units, self.machines, self.started_at,
                                 self.config.idle_timeout_s, self.status, self.servers,
                                 secrets=self.secrets, events=self.events,
                                 metrics=self.metrics),
                        self.config.token,
                        self.tokens,
                        AuditLog(os.path.join(self.config.state_dir, AUDIT_FILE)))

    def status(self) -> Dict[str, Any]:
        """This fleetd's part in the cluster, for /v1/health and list-servers."""
        lead = self.leadership.status()
        stale = self.registry.staleness()
        return {"name": self.config.name, "leader": self.epoch is not None,
                "epoch": self.epoch, "since": lead.since, "leader_name": lead.holder,
                "registry": self.config.registry_kind, "stale": stale}

    async def servers(self) -> List[Dict[str, Any]]:
        """list-servers' rows: every fleetd and etcd member (``servers``), or this one."""
        if self._servers is not None:
            return await self._servers()
        me = self.status()
        return [{"kind": "fleetd", "name": me["name"], "addresses": self.config.addresses(),
                 "leader": me["leader"], "healthy": True, "detail": "", "pid": os.getpid(),
                 "version": __version__, "started_at": self.started_at,
                 "since": me["since"], "epoch": me["epoch"]}]

    def _fleet_state(self) -> FleetState:
        """What a scrape of /metrics reads: the records as they are."""
        units = [u for u in self.registry.list_units() if not names.is_template(u.name)]
        return FleetState(units, self.registry.list_observed(),
                          self.registry.list_machines())

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
        if not session.connected and session.retry_in is None:
            # its first connect of the term is still under way: after a restart with
            # many machines, fleetd's own backlog of handshakes, not the machine's
            # silence (test_scale_sim saw one judged lost 5.3 s into the term and its
            # units moved). The try ends within its timeouts; from then on silence
            # counts from the term's start as before, so a dead machine is judged at
            # most that much later, never earlier.
            return None
        return max(session.last_seen, self.term_started or self.started_at)

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
        """A session to ``machine`` for this term; none while following (the leader's
        watch sees the machine and opens its own)."""
        if self.epoch is None or machine.name in self.sessions:
            return
        session = MachineSession(machine, self.registry, self.transport_factory, self.changed,
                                 self.config.heartbeat_s, epoch=self.epoch)
        session.report_matters = self._report_matters
        session.publish = self.events.publish
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
                    for draft in transitions.machine_state(name, current, state, why):
                        self.events.publish(draft)
                except RegistryError as exc:  # judged again at the next tick
                    log.warning("cannot record that machine %s is %s: %s", name, state, exc)
                    continue
                session.machine = self.registry.get_machine(name) or session.machine
                self.changed()

    def _following(self) -> Optional[str]:
        """None while this fleetd leads; else who does, as the lock last said ("" when
        nobody is known to)."""
        if self.epoch is not None:
            return None
        return self.leadership.status().holder or ""

    # --- terms ------------------------------------------------------------------------
    async def _lead(self, epoch: int) -> None:
        """The leadership loop's on_elected: it awaits this and renews nothing meanwhile,
        so the term's beginning (``_elected``: a fenced write for each machine the last
        leader left up) runs beside the loop, not in it. In it, 200 machines on etcd
        took longer than the lock's TTL: the new leader stepped down as soon as it had
        begun, and the next term did the same (test_scale_sim saw minutes without a
        leader). ``_deposed`` cancels a beginning still under way."""
        self._beginning = asyncio.ensure_future(self._elected(epoch))

    async def _elected(self, epoch: int) -> None:
        """A term begins: machines the last leader left up are not heard yet, a session
        to each (every hello says ``epoch``: agents refuse the terms before), liveness,
        and the engine writes and pushes, fenced by ``epoch``."""
        term_started = time.time()
        log.info("leading as %s, epoch %d", self.config.name, epoch)
        # marked before this fleetd says it leads: a leader's list-machines never shows
        # a machine up that it has not heard (test_fleetd_crash's slow host, on etcd)
        for machine in self.registry.list_machines():
            if machine.state == liveness.UP:  # as the leader before this one left it
                try:
                    await self.registry.update_machine(
                        machine.name, state=liveness.UNREACHABLE,
                        error="not heard since this fleetd leads", epoch=epoch)
                except NotLeader as exc:  # the lock is gone: the loop will learn it too
                    log.warning("epoch %d ended before it began: %s", epoch, exc)
                    return
                except RegistryError as exc:  # the session's connect says it again
                    log.warning("cannot mark %s unreachable: %s", machine.name, exc)
        self.epoch, self.term_started = epoch, term_started
        self.engine.epoch = epoch  # it writes once the sessions settle (_settle)
        for machine in self.registry.list_machines():
            self._open_session(machine)
        self._term_tasks.append(asyncio.ensure_future(self._liveness()))
        self._term_tasks.append(asyncio.ensure_future(self._settle(epoch)))
        self._elected_once.set()
        self.changed()

    async def _settle(self, epoch: int) -> None:
        """The term's engine writes and pushes once every session has connected or failed
        its first try, or after SETTLE_S: placing at once puts every unit started while
        nobody led on the first agent to answer (tests/integration/test_ha_failover.py
        saw 6 of 6 on one of 3 equally loaded hosts), the others not up yet."""
        deadline = time.monotonic() + SETTLE_S
        while self.epoch == epoch and time.monotonic() < deadline and any(
                not s.connected and s.retry_in is None for s in self.sessions.values()):
            await asyncio.sleep(0.02)
        if self.epoch == epoch:
            self.engine.leading = True
            self.changed()

    async def _deposed(self, reason: str) -> None:
        """The term ends (the lock may expire, or fleetd stops): no more writes or pushes
        from this engine, every session closed, within ``Timing.stop_s``; a term still
        beginning (``_lead``) is cancelled, having said nothing to any host."""
        beginning, self._beginning = self._beginning, None
        if beginning is not None and not beginning.done():
            beginning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beginning
        if self.epoch is None:
            return
        log.warning("no longer leading (epoch %d): %s", self.epoch, reason)
        self.engine.leading, self.engine.epoch = False, None
        self.epoch = None
        for task in self._term_tasks:
            task.cancel()
        self._term_tasks.clear()
        sessions = list(self.sessions.values())
        self.sessions.clear()
        stop_s = self.leadership.timing.stop_s
        done, _ = await asyncio.wait([asyncio.ensure_future(s.stop()) for s in sessions]
                                     or [asyncio.ensure_future(asyncio.sleep(0))],
                                     timeout=stop_s)
        if len(done) < len(sessions):
            log.warning("%d sessions did not stop within %gs", len(sessions) - len(done),
                        stop_s)
        self.changed()

    def _changed_elsewhere(self) -> None:
        """Another fleetd wrote (a user's submit through it, or the leader's reports):
        waits and the engine look again; a leader opens sessions to machines added
        through a follower and closes those removed."""
        if self.epoch is not None:
            known = {m.name: m for m in self.registry.list_machines()}
            for name in [n for n in self.sessions if n not in known]:
                self._term_tasks.append(asyncio.ensure_future(self._close_session(name)))
            for name, machine in known.items():
                if name not in self.sessions:
                    self._open_session(machine)
        self.changed()

    # --- life ------------------------------------------------------------------------
    async def run(self, ready: Optional[asyncio.Future[None]] = None) -> None:
        """Serve until SIGTERM/SIGINT. Leadership runs beside the API; an impatient lock
        (one fleetd on SQLite) is taken before anything is served, or fleetd refuses to
        start (LeaseHeld)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        engine = asyncio.ensure_future(self.engine.run())
        leading = asyncio.ensure_future(self.leadership.run())
        beside = [asyncio.ensure_future(run()) for run in self.companions]
        runner: Optional[web.AppRunner] = None
        try:
            if not self.leadership.timing.patient:
                elected = asyncio.ensure_future(self._elected_once.wait())
                await asyncio.wait({elected, leading}, return_when=asyncio.FIRST_COMPLETED)
                elected.cancel()
                if leading.done():
                    leading.result()  # LeaseHeld: another fleetd has the lock
            self.engine.wake()
            runner = await serve(self.api(), self.config)
            log.info("fleetd %s ready: %d machines, %d units, API on %s%s", self.config.name,
                     len(self.registry.list_machines()), len(self.registry.list_units()),
                     self.config.socket,
                     f" and {self.config.listen}" if self.config.listen else "")
            if ready is not None:
                ready.set_result(None)
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({stopping, leading, *beside},
                               return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            for task in (leading, *beside):
                if task.done():
                    task.result()  # it ended (the roster: NameInUse): why is fleetd's error
        finally:
            log.info("fleetd stopping; agents keep their units running")
            if runner is not None:
                await runner.cleanup()
            leading.cancel()
            await self._deposed("fleetd stopping")
            await self.leadership.resign()
            engine.cancel()
            for task in beside:
                task.cancel()
            await self.registry.close()
            for close in self.closers:
                await close()
