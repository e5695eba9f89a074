"""Holds fleetd's desired set for this host and makes the units converge to it.

One ``Managed`` per unit. Changes to a unit are serialised by its lock: ``converge(name)``
asks the pure reconciler for the next task and executes it until there is none, so a
burst of desired-set updates always ends at the latest one. Everything else that acts
on a unit - handling an exit, a restart after its delay, sweeping its leftovers - takes
the same lock, so two programs of one unit can never be started side by side.

The supervisor decides; a runner acts (fleetd.agent.runner), picked by what the unit's
driver declares (``Driver.capabilities``):

  ProcessUnits  (fleetd.agent.process_units)  exec and java: the agent forks, watches,
                restarts by Restart=, and owns the unit's cgroup;
  SystemdUnits  (fleetd.agent.systemd_units)  Driver=systemd: systemd's to run,
                restart and limit; started and stopped through the driver and polled.

Each runner gets a narrow port (``runner.Port``), which this class implements; none
imports it. The drivers and the host's cgroups are given (the composition root,
fleetd.agent.host, detects and builds them); tests give fakes (fleetd.testing.driver).

Fencing (fleetd.agent.fencing): a unit with FenceAfterSec= that runs or is starting is
stopped through its runner's stop once fleetd has been silent longer than that, and
reported ``stopped`` with the reason (``fenced: ...``). It stays in ``fenced`` - no
Restart=, no converge starts it - until fleetd's next desired set.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Set,
    cast,
)

from fleetd import protocol
from fleetd.agent import fencing, reconciler, reloading, specs, systemd_units
from fleetd.agent.cgroup_ops import UnitCgroups
from fleetd.agent.fencing import FENCEABLE, Fencer
from fleetd.agent.managed import Managed
from fleetd.agent.process_units import ProcessUnits
from fleetd.agent.reconciler import Current
from fleetd.agent.runner import Runner, finish
from fleetd.agent.state import AgentState
from fleetd.agent.systemd_units import SystemdUnits
from fleetd.cgroups import Backend
from fleetd.drivers.base import Driver, DriverError, Handle, StartContext, SupervisingDriver
from fleetd.wire import messages, numbers
from fleetd.wire.unitspec import GENERATION, UnitConfig, UnitSpec, UnitStatus

log = logging.getLogger("fleet-agent")


def boot_id() -> str:
    """Changes at every boot: a record from an earlier boot proves nothing."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Supervisor:
    """``drivers``: the drivers this host offers, by name (only those it can run: a
    Driver=systemd unit on a host without systemd fails to start, saying so);
    ``backend``: the host's cgroups, under fleet/<machine-id>."""

    def __init__(self, state: AgentState, machine_id: str, emit: Callable[[bytes], None],
                 backend: Backend, drivers: Mapping[str, Driver],
                 systemd_poll_s: float = systemd_units.POLL_S,
                 fence_check_s: float = fencing.CHECK_S) -> None:
        self.state = state
        self.machine_id = machine_id
        self.emit = emit
        self.backend = backend
        self.drivers: Dict[str, Driver] = dict(drivers)
        self.processes = ProcessUnits(self, UnitCgroups(backend))
        supervised = [cast(SupervisingDriver, d) for d in self.drivers.values()
                      if d.capabilities.supervises_itself]
        assert len(supervised) <= 1, "one host service manager"
        self.systemd = SystemdUnits(self, supervised[0] if supervised else None,
                                    poll_s=systemd_poll_s)
        self.desired: Dict[str, UnitSpec] = {}
        self.units: Dict[str, Managed] = {}
        self.boot_id = boot_id()
        # one lock per unit name, kept for the agent's life: two converges of one unit
        # must never run side by side (that is how duplicates are born)
        self._locks: Dict[str, asyncio.Lock] = {}
        self._tasks: Set[asyncio.Task[None]] = set()
        self.fencer = Fencer(self, fence_check_s)

    @property
    def fenced(self) -> Dict[str, str]:
        """The units stopped for fleetd's silence, with why (until its next set)."""
        return self.fencer.fenced

    @property
    def last_heard(self) -> float:
        return self.fencer.last_heard

    # --- the runners' port --------------------------------------------------------------
    def report(self, m: Managed) -> None:
        self.emit(protocol.dump(messages.unit_changed(m.status())))

    def save(self, m: Managed) -> None:
        """The evidence a restarted agent re-adopts the program by."""
        assert m.handle is not None
        self.state.save_record(m.name, {"spec": m.spec, "handle": m.handle.to_record(),
                                        "boot_id": self.boot_id, "restarts": m.restarts,
                                        "streak": m.streak})

    def delete_record(self, name: str) -> None:
        self.state.delete_record(name)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error", exc_info=task.exception())

    def converge_later(self, name: str) -> None:
        self.spawn(self.converge(name))

    def context(self, m: Managed) -> StartContext:
        return StartContext(unit=m.name, machine_id=self.machine_id,
                            log_path=self.state.unit_log(m.name),
                            invocation_id=uuid.uuid4().hex)

    def all_units(self) -> Iterable[Managed]:
        return list(self.units.values())

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    def current(self, name: str) -> Optional[Managed]:
        return self.units.get(name)

    def wanted(self, m: Managed) -> bool:
        """Is ``m`` still the spec fleetd wants running (checked before a delayed
        restart: the desired set may have changed while it waited), and not fenced?"""
        spec = self.desired.get(m.name)
        return (self.units.get(m.name) is m and spec is not None
                and m.name not in self.fenced
                and spec["hash"] == m.spec["hash"]
                and spec.get("generation", GENERATION) == m.spec.get("generation", GENERATION)
                and spec["want"] == protocol.WANT_RUNNING)

    def desired_configs(self) -> Iterable[UnitConfig]:
        return [s.get("config") or {} for s in self.desired.values()]

    # --- reports and desired state -------------------------------------------------------
    def snapshot(self) -> List[UnitStatus]:
        return [m.status() for m in self.units.values()]

    def set_desired(self, specs: List[UnitSpec]) -> None:
        """Take fleetd's whole desired set for this host (persisted before acting).
        It also ends every fence: fleetd has spoken, and this set says what runs here."""
        self.state.save_desired(specs)
        self.desired = {s["name"]: s for s in specs}
        if self.fenced:
            log.info("fleetd's desired set arrived: no longer fenced: %s",
                     ", ".join(sorted(self.fenced)))
            self.fenced.clear()
        for name in set(self.desired) | set(self.units):
            self.spawn(self.converge(name))
        self.fencer.ensure(self._done)

    def heard(self) -> None:
        """The leading fleetd said something (fleetd.agent.fencing)."""
        self.fencer.heard()

    # --- converging ----------------------------------------------------------------------
    def _driver(self, m: Managed) -> Optional[Driver]:
        return self.drivers.get(m.spec["driver"])

    def _runner(self, driver: Driver) -> Runner:
        if driver.capabilities.supervises_itself:
            return self.systemd
        return self.processes

    async def converge(self, name: str) -> None:
        async with self.lock(name):
            while True:
                m = self.units.get(name)
                spec = self.desired.get(name)
                cur = Current(hash=m.spec["hash"], state=m.state,
                              generation=m.spec.get("generation", GENERATION),
                              base=m.spec.get("base") or "") if m else None
                task = reconciler.next_task(spec, cur)
                if task is None:
                    return
                if task.kind == reconciler.START and name in self.fenced:
                    log.info("%s: not starting: %s (until fleetd's next desired set)",
                             name, self.fenced[name])
                    return
                log.info("%s: %s (%s)", name, task.kind, task.reason)
                if task.kind == reconciler.LOAD:
                    assert spec is not None
                    self.state.delete_record(name)
                    fresh = Managed(spec)
                    self.units[name] = fresh
                    self.report(fresh)
                elif task.kind == reconciler.START:
                    assert m is not None
                    await self.start(m)
                elif task.kind == reconciler.STOP:
                    assert m is not None
                    await self._stop(m)
                elif task.kind == reconciler.FORGET:
                    assert m is not None
                    await self._forget(m)
                elif task.kind == reconciler.RELOAD:
                    assert m is not None and spec is not None
                    await self._reload(m, spec)

    async def start(self, m: Managed, automatic: bool = False) -> None:
        """Start the unit (under its lock) through its runner. ``automatic``: a restart
        by Restart=."""
        driver = self._driver(m)
        if driver is None:
            m.cancel_timers()
            finish(self, m, protocol.FAILED, f"driver {m.spec['driver']} is not available here")
            return
        await self._runner(driver).start(m, driver, automatic)

    async def _stop(self, m: Managed) -> None:
        driver = self._driver(m)
        if driver is not None and m.handle is not None:
            await self._runner(driver).stop(m, driver)
        else:  # nothing of it runs: its cgroup (if any) is emptied and removed
            await self.processes.stop(m, driver)

    async def _reload(self, m: Managed, spec: UnitSpec) -> None:
        """OnPeersChange=reload (fleetd.agent.reloading); a reload that fails is a
        restart, as if the option were not there, and the log says why."""
        driver = self._driver(m)
        why = "its driver is not available" if driver is None else \
            await reloading.reload(self, self.processes.runs, m, driver, spec)
        if why is not None:
            log.warning("%s: reload failed, restarting instead: %s", m.name, why)
            await self._stop(m)

    async def _forget(self, m: Managed) -> None:
        driver = self._driver(m)
        self.units.pop(m.name, None)
        self.state.delete_record(m.name)
        runner = self._runner(driver) if driver is not None else self.processes
        await runner.forget(m, driver)
        self.emit(protocol.dump(messages.removed(m.name)))

    def end_run(self, name: str, outcome: str, why: str) -> bool:
        """End the unit's running program for a reason of the agent's own - for a failing
        health check: ``end_run(name, restart.WATCHDOG, "health check failing: ...")``,
        systemd's nearest equivalent being WatchdogSec= - with KillSignal=, then SIGKILL
        after TimeoutStopSec=. Restart= then judges ``outcome`` like any other end.
        False if no program of the unit runs (or it is the host's systemd's)."""
        m = self.units.get(name)
        driver = self._driver(m) if m is not None else None
        if m is None or driver is None:
            return False
        return self._runner(driver).end_run(m, driver, outcome, why)

    # --- fencing ------------------------------------------------------------------------
    async def fence(self, m: Managed) -> None:
        """Stop a unit fleetd was silent on past its FenceAfterSec=, as any stop, reported
        ``stopped`` with the reason. Contact regained meanwhile does not save it: its
        deadline passed, and fleetd may already count on it being stopped."""
        async with self.lock(m.name):
            why = self.fenced.get(m.name)
            if why is None or self.units.get(m.name) is not m or m.state not in FENCEABLE:
                return  # a desired set came meanwhile, or it ended by itself
            log.warning("%s: stopping: %s", m.name, why)
            m.error = why
            await self._stop(m)

    # --- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild the picture after an agent (re)start: adopt what provably still runs
        (pid + exact start tick + cgroup membership), sweep every other cgroup of ours,
        and converge."""
        self.desired = {s["name"]: s for s in self.state.load_desired()}
        records = self.state.load_records()
        adopted: Set[str] = set()
        dead: List[Managed] = []
        for name, record in records.items():
            spec = _adoptable(name, record.get("spec"))
            if spec is None or not isinstance(record.get("handle"), dict):
                self.state.delete_record(name)
                continue
            m = Managed(spec)
            m.restarts = _count(record.get("restarts", 0))
            m.streak = _count(record.get("streak", 0))
            driver = self.drivers.get(spec.get("driver", ""))
            same_boot = record.get("boot_id") == self.boot_id
            handle: Optional[Handle] = None
            if driver is not None and same_boot:
                try:
                    handle = driver.recover(record["handle"])
                except DriverError as exc:
                    log.warning("%s: cannot recover: %s", name, exc)
            if driver is not None and handle is not None:
                if self._runner(driver).adopt(m, driver, handle):
                    adopted.add(name)
            elif same_boot and name in self.desired:
                m.state = protocol.FAILED
                m.error = "exited while the agent was not running (status unknown)"
                m.exit_status = None
                self.state.delete_record(name)
                dead.append(m)
            else:
                self.state.delete_record(name)
                continue  # from an earlier boot: start afresh below
            self.units[name] = m
        self.processes.recovered(records, set(self.desired), adopted)
        for m in dead:  # ended unseen: an unknown result, for Restart= to judge
            self.spawn(self.processes.dead_on_arrival(m))
        self.systemd.recovered(records, set(self.desired), adopted)
        for name in set(self.desired) | set(self.units):
            self.spawn(self.converge(name))
        self.fencer.ensure(self._done)


def _adoptable(name: str, spec: object) -> Optional[UnitSpec]:
    """``spec`` (from the unit record of ``name`` on disk) if this agent can run it."""
    try:
        checked = specs.check_spec(spec)
    except specs.SpecError as exc:
        log.warning("%s: its record holds a spec this agent refuses: %s", name, exc)
        return None
    return checked if checked["name"] == name else None


def _count(value: object) -> int:
    """A restart count from a record on disk: a whole number, or 0 for anything else (a
    record another version or a damaged disk wrote must not stop the agent at start)."""
    try:
        return numbers.json_int(value, 0, 2 ** 31 - 1)
    except numbers.NumberError:
        return 0
