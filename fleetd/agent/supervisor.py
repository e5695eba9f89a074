"""Runs the host reconciler's tasks and watches every program the agent is responsible for.

One ``Managed`` per unit. Changes to a unit are serialised by its lock: ``converge(name)``
asks the pure reconciler for the next task and executes it until there is none, so a
burst of desired-set updates always ends at the latest one. Everything else that acts
on a unit - handling an exit, a restart after its delay, sweeping its leftovers - takes
the same lock, so two programs of one unit can never be started side by side.

A unit's life with the exec and java drivers, as systemd runs a service:

  start    start limit -> leftovers of an earlier run killed -> ExecStartPre= in order
           (each must succeed unless "-") -> the main process -> ExecStartPost=
           (running once they succeeded; Type=oneshot: after its ExecStart= lines ran)
  exit     seen through a pidfd (fleetd.agent.procwatch), at once. The main process is
           the unit: when it ends, whatever it left in the cgroup is stopped too
           (KillSignal=, SIGKILL after TimeoutStopSec=) - systemd's KillMode=
           control-group. A program that forks into the background and exits is not a
           Type=simple service; its daemon would be killed right away (run it in the
           foreground, or use Driver=systemd for Type=forking).
  restart  by Restart= on the run's result (fleetd.agent.restart), after RestartSec=
           growing by RestartSteps= up to RestartMaxDelaySec=; with a delay of 0 the new
           program is forked in the same turn of the event loop that saw the exit. While
           it waits the unit is reported ``starting`` (systemd: activating/auto-restart),
           not ``failed``: fleetd must not reschedule a unit that is about to come back.
  limit    more than StartLimitBurst= starts within StartLimitIntervalSec=: ``failed``,
           with the reason, and no more restarts here (fleetd may reschedule it).
  stop     ExecStop= (if the program runs), then KillSignal= to the whole cgroup, then
           SIGKILL after TimeoutStopSec= (none: wait for ever), then the cgroup is removed.

A unit's cgroup (fleet/<machine-id>/<unit> in every hierarchy) lives from its first
start until the unit settles (exited, failed, stopped) or is forgotten; restarts reuse
it (its limits are written again, so a changed limit applies), and its OOM kill counter
then tells an OOM kill from any other SIGKILL. At agent start every cgroup of ours that
no adopted program explains is emptied (SIGKILL) and removed: a program whose record was
lost in a crash must not run on beside the copy the agent is about to start.

Driver=systemd units are systemd's to run, restart and limit: they are started and
stopped through the driver and polled (fleetd.agent.systemd_units).

Fencing (fleetd.agent.fencing): a unit with FenceAfterSec= that runs or is starting is
stopped through the stop path above once fleetd has been silent longer than that, and
reported ``stopped`` with the reason (``fenced: ...``). It stays in ``fenced`` - no
Restart=, no converge starts it - until fleetd's next desired set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, cast

from fleetd import protocol
from fleetd.agent import fencing, procwatch, reconciler, restart, specs
from fleetd.agent.health import HealthChecker, acts_on_failing
from fleetd.agent.managed import Managed
from fleetd.agent.reconciler import Current
from fleetd.agent.state import AgentState
from fleetd.agent.systemd_units import SystemdUnits
from fleetd.cgroups import Backend, CgroupError, Limits, detect
from fleetd.drivers.base import Driver, DriverError, Handle, ProcessDriver, StartContext
from fleetd.drivers.exec import ExecDriver
from fleetd.drivers.java import JavaDriver
from fleetd.drivers.systemd import SystemdDriver

log = logging.getLogger("fleet-agent")

KILL_GRACE_S = 5.0  # after SIGKILL, how long to wait before giving up on a process
FENCEABLE = (protocol.STARTING, protocol.RUNNING)  # what fencing stops
EMPTY_POLL_S = 0.01  # how often a cgroup is looked at while waiting for it to empty


def boot_id() -> str:
    """Changes at every boot: a record from an earlier boot proves nothing."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Supervisor:
    def __init__(
        self,
        state: AgentState,
        machine_id: str,
        emit: Callable[[bytes], None],
        backend: Optional[Backend] = None,
    ) -> None:
        self.state = state
        self.machine_id = machine_id
        self.emit = emit
        # several agents may share one kernel (lab hosts): each owns fleet/<machine-id>
        self.backend = backend if backend is not None else detect(parent=f"fleet/{machine_id}")
        exec_driver = self.exec_driver = ExecDriver(self.backend)  # java runs through it
        self.drivers: Dict[str, Driver] = {"exec": exec_driver,
                                           "java": JavaDriver(exec_driver)}
        sd = SystemdDriver()
        if sd.available():
            self.drivers["systemd"] = sd
        self.systemd = SystemdUnits(self, sd if "systemd" in self.drivers else None)
        self.desired: Dict[str, Dict[str, Any]] = {}
        self.units: Dict[str, Managed] = {}
        self.boot_id = boot_id()
        # one lock per unit name, kept for the agent's life: two converges of one unit
        # must never run side by side (that is how duplicates are born)
        self._locks: Dict[str, asyncio.Lock] = {}
        self._tasks: Set[asyncio.Task[None]] = set()
        # fencing: when fleetd was last heard (monotonic; from agent start, not persisted),
        # and the units stopped for its silence, with why, until its next desired set
        self.last_heard = time.monotonic()
        self.fenced: Dict[str, str] = {}
        self._fencer: Optional[asyncio.Task[None]] = None

    # --- reports -----------------------------------------------------------------
    def snapshot(self) -> List[Dict[str, Any]]:
        return [m.status() for m in self.units.values()]

    def report(self, m: Managed) -> None:
        self.emit(protocol.encode("unit", unit=m.status()))

    def save(self, m: Managed) -> None:
        """The evidence a restarted agent re-adopts the program by."""
        assert m.handle is not None
        self.state.save_record(m.name, {"spec": m.spec, "handle": m.handle.to_record(),
                                        "boot_id": self.boot_id, "restarts": m.restarts,
                                        "streak": m.streak})

    # --- desired state ---------------------------------------------------------------
    def set_desired(self, specs: List[Dict[str, Any]]) -> None:
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
        self._ensure_fencing()

    def heard(self) -> None:
        """fleetd said something (any message of a client that said hello as fleetd)."""
        self.last_heard = time.monotonic()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("internal error", exc_info=task.exception())

    def lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def converge(self, name: str) -> None:
        async with self.lock(name):
            while True:
                m = self.units.get(name)
                spec = self.desired.get(name)
                cur = Current(hash=m.spec["hash"], state=m.state,
                              generation=m.spec.get("generation", 0)) if m else None
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
                    await self._start(m)
                elif task.kind == reconciler.STOP:
                    assert m is not None
                    await self._stop(m)
                elif task.kind == reconciler.FORGET:
                    assert m is not None
                    await self._forget(m)

    def _wanted(self, m: Managed) -> bool:
        """Is ``m`` still the spec fleetd wants running (checked before a delayed
        restart: the desired set may have changed while it waited), and not fenced?"""
        spec = self.desired.get(m.name)
        return (self.units.get(m.name) is m and spec is not None
                and m.name not in self.fenced
                and spec["hash"] == m.spec["hash"]
                and spec.get("generation", 0) == m.spec.get("generation", 0)
                and spec["want"] == protocol.WANT_RUNNING)

    def _driver(self, m: Managed) -> Optional[Driver]:
        return self.drivers.get(m.spec["driver"])

    def _context(self, m: Managed) -> StartContext:
        return StartContext(unit=m.name, machine_id=self.machine_id,
                            log_path=self.state.unit_log(m.name),
                            invocation_id=uuid.uuid4().hex)

    # --- starting ------------------------------------------------------------------
    async def _start(self, m: Managed, automatic: bool = False) -> None:
        """Start the unit (under its lock). ``automatic``: a restart by Restart=."""
        driver = self._driver(m)
        m.cancel_timers()
        last_error, m.error = m.error, None
        if driver is None:
            self._finish(m, protocol.FAILED, f"driver {m.spec['driver']} is not available here")
            return
        if getattr(driver, "supervises", False):
            await self.systemd.start(m, driver)
            return
        proc = cast(ProcessDriver, driver)
        loop = asyncio.get_running_loop()
        if not automatic:
            m.exit_status, m.streak = None, 0
        if not m.limiter.allow(loop.time()):
            hit = m.limiter.describe()
            self._finish(m, protocol.FAILED, f"{hit} (last: {last_error})" if automatic
                         and last_error else hit)
            self._release(m)
            return
        if automatic:
            m.restarts += 1
        if not await self._clear(m, signal.SIGKILL, KILL_GRACE_S):
            self._finish(m, protocol.FAILED, "processes of an earlier run of this unit "
                                             "survived SIGKILL in its cgroup")
            return
        config = m.config
        timeout = config.get("timeout_start_s")
        m.deadline = loop.time() + timeout if timeout is not None else None
        ctx = self._context(m)
        if config.get("pre"):
            self._starting(m)
        for command in config.get("pre") or []:
            outcome, why = await self._control(m, proc, ctx, command, "ExecStartPre")
            if outcome != restart.SUCCESS:
                await self._after_run(m, outcome, why, ran_s=0.0)
                return
        try:
            handle = proc.start(config, ctx, m.command_index)
        except DriverError as exc:
            log.warning("%s: cannot start: %s", m.name, exc)
            await self._after_run(m, restart.EXIT_CODE, str(exc), ran_s=0.0)
            return
        self._running(m, handle)
        if m.oneshot:
            self._arm_start_timeout(m, handle)
            self._starting(m)
            return
        if config.get("post"):
            self._starting(m)
            ok = await self._posts(m, proc, ctx, handle)
            if not ok or m.handle is not handle or m.gone.is_set():
                return  # _life handles the end
        m.state = protocol.RUNNING
        self.report(m)

    def _starting(self, m: Managed) -> None:
        """Report ``starting`` while ExecStartPre=/Post= or a oneshot run (once)."""
        if m.state != protocol.STARTING:
            m.state = protocol.STARTING
            self.report(m)

    def _running(self, m: Managed, handle: Handle) -> None:
        """The main process is up: remember it (on disk too) and watch it."""
        m.handle = handle
        m.gone.clear()
        m.forced = None
        m.started_mono = asyncio.get_running_loop().time()
        m.oom_before = self._oom_kills(m)
        self.save(m)
        self.spawn(self._life(m, handle))
        self._check_health(m, handle)

    # --- health checks ---------------------------------------------------------------
    def _check_health(self, m: Managed, handle: Handle) -> None:
        """Start the [X-Check] loop for this run of the program (none without a check).
        An exec check runs as the unit does: its user, environment and cgroup."""
        self._stop_health(m)
        check = m.config.get("check")
        if not check:
            return
        env: Optional[Dict[str, str]] = None
        preexec: Optional[Callable[[], None]] = None
        if check.get("type") == "exec" and m.spec.get("driver") in ("exec", "java"):
            # the run's own FLEET_INVOCATION_ID, as systemd gives a unit's every process
            ctx = dataclasses.replace(self._context(m), invocation_id=handle.invocation_id)
            try:
                env, preexec = self.exec_driver.as_unit(m.config, ctx)
            except DriverError as exc:
                log.warning("%s: exec check runs without the unit's settings: %s", m.name, exc)
        m.checker = HealthChecker(m.name, check,
                                  lambda health, detail: self._verdict(m, handle, health, detail),
                                  env=env, preexec=preexec)
        m.checker.start(since_start_s=max(time.time() - handle.started_at, 0.0))

    def _stop_health(self, m: Managed) -> None:
        if m.checker is not None:
            m.checker.stop()
            m.checker = None
        m.health = "unknown"

    def _verdict(self, m: Managed, handle: Handle, health: str, detail: str) -> None:
        """A health verdict changed: report it; a failing one with OnFailure=restart ends
        the program as a watchdog timeout would, and Restart= decides what follows."""
        if m.handle is not handle or m.gone.is_set():
            return
        m.health = health
        log.info("%s: health %s (%s)", m.name, health, detail)
        self.report(m)
        if health == "failing" and acts_on_failing(m.config.get("check")):
            self.end_run(m.name, restart.WATCHDOG, f"health check failing: {detail}")

    async def _posts(self, m: Managed, proc: ProcessDriver, ctx: StartContext,
                     handle: Handle) -> bool:
        """ExecStartPost=, with $MAINPID; a failure ends the program (systemd: the
        start failed, so the unit goes down and Restart= decides)."""
        for command in m.config.get("post") or []:
            outcome, why = await self._control(m, proc, ctx, command, "ExecStartPost",
                                               {"MAINPID": str(handle.pid)})
            if outcome != restart.SUCCESS:
                if m.handle is handle and not m.gone.is_set():
                    m.forced = (outcome, why or "ExecStartPost= failed")
                    self.spawn(self._terminate(m, handle))
                return False
        return True

    def _arm_start_timeout(self, m: Managed, handle: Handle) -> None:
        """Type=oneshot: TimeoutStartSec= bounds its whole run."""
        if m.deadline is None:
            return
        loop = asyncio.get_running_loop()

        def expired() -> None:
            if m.handle is handle and not m.gone.is_set():
                timeout = restart.format_seconds(float(m.config.get("timeout_start_s") or 0))
                m.forced = (restart.TIMEOUT, f"did not finish within TimeoutStartSec={timeout}")
                self.spawn(self._terminate(m, handle))

        m.timeout_timer = loop.call_at(m.deadline, expired)

    async def _terminate(self, m: Managed, handle: Handle) -> None:
        """End a program we gave up on: KillSignal=, SIGKILL after TimeoutStopSec=."""
        driver = cast(ProcessDriver, self._driver(m))
        driver.signal(handle, int(m.config.get("kill_signal", signal.SIGTERM)))
        if not await _wait(m.gone, m.config.get("timeout_stop_s", 90.0)):
            driver.signal(handle, signal.SIGKILL)

    async def _control(self, m: Managed, proc: ProcessDriver, ctx: StartContext,
                       command: Dict[str, Any], option: str,
                       extra_env: Optional[Dict[str, str]] = None,
                       timeout: Optional[float] = None) -> Tuple[str, Optional[str]]:
        """Run one control command to its end: (result, why it failed)."""
        words = " ".join(str(w) for w in command.get("words", []))
        what = f"{option}={words}"
        try:
            h = proc.run(m.config, ctx, command, extra_env)
        except DriverError as exc:
            return restart.EXIT_CODE, f"{what}: {exc}"
        ended = procwatch.watch(h.pid, h.start_ticks)
        loop = asyncio.get_running_loop()
        if timeout is None and m.deadline is not None and option.startswith("ExecStart"):
            timeout = max(m.deadline - loop.time(), 0.0)
        try:
            end = await asyncio.wait_for(asyncio.shield(ended), timeout)
        except asyncio.TimeoutError:
            # the command's own process group (it leads one), not the unit's cgroup
            proc.signal(dataclasses.replace(h, unit=""), signal.SIGKILL)
            await ended
            return restart.TIMEOUT, f"{what}: did not finish in time ({option})"
        if command.get("ignore_failure"):
            return restart.SUCCESS, None
        outcome = restart.result(end, m.config.get("success_exit_status"), oneshot=True)
        if outcome == restart.SUCCESS:
            return outcome, None
        return outcome, f"{what}: {restart.describe(outcome, end)}"

    def end_run(self, name: str, outcome: str, why: str) -> bool:
        """End the unit's running program for a reason of the agent's own - for a failing
        health check: ``end_run(name, restart.WATCHDOG, "health check failing: ...")``,
        systemd's nearest equivalent being WatchdogSec= - with KillSignal=, then SIGKILL
        after TimeoutStopSec=. Restart= then judges ``outcome`` like any other end.
        False if no program of the unit runs (or it is the host's systemd's)."""
        m = self.units.get(name)
        driver = self._driver(m) if m is not None else None
        if (m is None or driver is None or getattr(driver, "supervises", False)
                or m.handle is None or m.gone.is_set() or m.state == protocol.STOPPING):
            return False
        m.forced = (outcome, why)
        self.spawn(self._terminate(m, m.handle))
        return True

    # --- exits ------------------------------------------------------------------------
    async def _life(self, m: Managed, handle: Handle) -> None:
        """Wait for the main process to end, then decide what follows (under the lock)."""
        end = await procwatch.watch(handle.pid, handle.start_ticks)
        if m.handle is handle:
            m.gone.set()  # before taking the lock: a stop holding it waits for this
            self._stop_health(m)
        if m.handle is not handle:
            return  # a stale watcher of an earlier program of this unit
        if m.state == protocol.STOPPING:
            m.exit_status = end.code
            return  # _stop reports the outcome
        async with self.lock(m.name):
            if (self.units.get(m.name) is not m or m.handle is not handle
                    or m.state in (protocol.STOPPING, protocol.STOPPED)):
                return
            await self._ended(m, handle, end)

    async def _ended(self, m: Managed, handle: Handle, end: restart.Exit) -> None:
        if m.timeout_timer is not None:
            m.timeout_timer.cancel()
            m.timeout_timer = None
        config = m.config
        loop = asyncio.get_running_loop()
        ran_s = loop.time() - m.started_mono
        forced, m.forced = m.forced, None
        # the main process was the unit: what it left behind goes too (KillMode=control-group)
        await self._clear(m, int(config.get("kill_signal", signal.SIGTERM)),
                          config.get("timeout_stop_s", 90.0))
        commands = config.get("commands") or []
        ignore = bool(commands and commands[m.command_index].get("ignore_failure"))
        oom = end.code == -signal.SIGKILL and self._oom_kills(m) > m.oom_before
        if forced is not None:
            outcome, why = forced[0], forced[1]
        elif ignore:
            outcome, why = restart.SUCCESS, None
        else:
            outcome = restart.result(end, config.get("success_exit_status"), m.oneshot, oom)
            why = None if outcome == restart.SUCCESS else restart.describe(
                outcome, end, Limits.from_config(config.get("limits") or {}).describe(
                    ["memory_max"]))
        log.info("%s: pid %d %s", m.name, handle.pid, why or "ended cleanly")
        m.exit_status = end.code
        if outcome == restart.SUCCESS and m.oneshot:
            if m.command_index + 1 < len(commands):
                m.command_index += 1  # oneshot: the next ExecStart= in order
                if await self._next_command(m):
                    return
                outcome, why = restart.EXIT_CODE, m.error
            else:
                m.command_index = 0
                proc = cast(ProcessDriver, self._driver(m))
                ok = await self._posts(m, proc, self._context(m), handle)
                if not ok:
                    outcome, why = restart.EXIT_CODE, "ExecStartPost= failed"
        m.command_index = 0
        await self._after_run(m, outcome, why, ran_s)

    async def _next_command(self, m: Managed) -> bool:
        proc = cast(ProcessDriver, self._driver(m))
        try:
            handle = proc.start(m.config, self._context(m), m.command_index)
        except DriverError as exc:
            m.error = str(exc)
            return False
        self._running(m, handle)
        self._arm_start_timeout(m, handle)
        return True

    async def _after_run(self, m: Managed, outcome: str, why: Optional[str],
                         ran_s: float) -> None:
        """A run (or a start) ended with ``outcome``: restart by policy, or settle."""
        opts = restart.restart_options(m.config)
        if restart.streak_broken(ran_s, opts["max_delay_s"]):
            m.streak = 0
        if restart.shall_restart(opts["policy"], outcome):
            m.streak += 1
            delay = restart.delay(m.streak, opts["restart_s"], opts["steps"],
                                  opts["max_delay_s"])
            m.state, m.error = protocol.STARTING, why
            log.info("%s: restarting in %s (%s)", m.name, restart.format_seconds(delay),
                     why or outcome)
            self.report(m)
            self._restart_after(m, delay)
            return  # the record stays until the next program's replaces it: it proves
            # nothing (its pid is dead), and a restarted agent restarts the unit by it
        self.state.delete_record(m.name)
        await self._clear(m, signal.SIGKILL, KILL_GRACE_S)  # what a failed ExecStartPre= left
        self._release(m)
        self._finish(m, protocol.EXITED if outcome == restart.SUCCESS else protocol.FAILED,
                     why)
        self.spawn(self.converge(m.name))

    def _finish(self, m: Managed, state: str, why: Optional[str]) -> None:
        m.state, m.error = state, why
        if why and state == protocol.FAILED:
            log.warning("%s: failed: %s", m.name, why)
        self.report(m)

    def _restart_after(self, m: Managed, delay: float) -> None:
        m.restart_pending = True
        if delay <= 0:  # no timer: the next turn of the loop forks it
            self.spawn(self._restart(m))
            return
        loop = asyncio.get_running_loop()
        m.restart_timer = loop.call_later(delay, lambda: self.spawn(self._restart(m)))

    async def _restart(self, m: Managed) -> None:
        async with self.lock(m.name):
            if not m.restart_pending or m.state != protocol.STARTING:
                return  # stopped or replaced meanwhile
            m.restart_pending, m.restart_timer = False, None
            if not self._wanted(m):
                self.spawn(self.converge(m.name))
                return
            await self._start(m, automatic=True)

    # --- stopping ------------------------------------------------------------------
    async def _stop(self, m: Managed) -> None:
        driver = self._driver(m)
        m.cancel_timers()
        if driver is not None and getattr(driver, "supervises", False) and m.handle is not None:
            await self.systemd.stop(m, driver)
            return
        handle = m.handle
        if handle is None or driver is None or m.gone.is_set():
            await self._clear(m, signal.SIGKILL, KILL_GRACE_S)
            self._release(m)
            m.state = protocol.STOPPED
            self.state.delete_record(m.name)
            self.report(m)
            return
        proc = cast(ProcessDriver, driver)
        m.state = protocol.STOPPING
        self.report(m)
        config = m.config
        timeout = config.get("timeout_stop_s", 90.0)  # None: wait as long as it takes
        ctx = self._context(m)
        for command in config.get("stop") or []:
            if m.gone.is_set():
                break
            _outcome, why = await self._control(m, proc, ctx, command, "ExecStop",
                                               {"MAINPID": str(handle.pid)}, timeout)
            if why:
                log.warning("%s: %s", m.name, why)
        await self._clear(m, int(config.get("kill_signal", signal.SIGTERM)), timeout,
                          handle=handle)
        if not m.gone.is_set():
            m.error = f"pid {handle.pid} survived SIGKILL"
        self._release(m)
        m.state = protocol.STOPPED
        self.state.delete_record(m.name)
        self.report(m)

    async def _forget(self, m: Managed) -> None:
        driver = self._driver(m)
        self.units.pop(m.name, None)
        self.state.delete_record(m.name)
        if driver is not None and getattr(driver, "supervises", False):
            await self.systemd.forget(m, driver)
        else:
            self._release(m)
        self.emit(protocol.encode("removed", name=m.name))

    # --- fencing ------------------------------------------------------------------------
    def _ensure_fencing(self) -> None:
        """Run the fencing timer while any unit here has FenceAfterSec=."""
        if (self._fencer is None or self._fencer.done()) and self._fences_any():
            self._fencer = asyncio.ensure_future(self._fencing())
            self._fencer.add_done_callback(self._done)

    def _fences_any(self) -> bool:
        configs = [s.get("config") or {} for s in self.desired.values()]
        configs += [m.config for m in self.units.values()]
        return any(fencing.fence_after(c) is not None for c in configs)

    async def _fencing(self) -> None:
        """Look at every unit with FenceAfterSec= when the next one falls due (at least
        every fencing.CHECK_S); fence the ones fleetd has been silent on for too long."""
        while self._fences_any():
            limits: Dict[str, float] = {}
            for m in self.units.values():
                limit = fencing.fence_after(m.config)
                if limit is not None and m.state in FENCEABLE and m.name not in self.fenced:
                    limits[m.name] = limit
            due, wait = fencing.plan(limits, self.last_heard, time.monotonic())
            for name, why in due:
                self.fenced[name] = why  # from now on nothing starts it: not even Restart=
                self.spawn(self._fence(self.units[name]))
            await asyncio.sleep(wait)

    async def _fence(self, m: Managed) -> None:
        """Stop a unit fleetd was silent on past its FenceAfterSec=, as any stop (ExecStop=,
        KillSignal= to its whole cgroup, SIGKILL after TimeoutStopSec=), reported
        ``stopped`` with the reason. Contact regained meanwhile does not save it: its
        deadline passed, and fleetd may already count on it being stopped."""
        async with self.lock(m.name):
            why = self.fenced.get(m.name)
            if why is None or self.units.get(m.name) is not m or m.state not in FENCEABLE:
                return  # a desired set came meanwhile, or it ended by itself
            log.warning("%s: stopping: %s", m.name, why)
            m.error = why
            await self._stop(m)

    # --- the unit's cgroup --------------------------------------------------------------
    async def _clear(self, m: Managed, signum: int, timeout: Optional[float],
                     handle: Optional[Handle] = None) -> bool:
        """Make the unit's cgroup empty (and its main process gone, if ``handle``):
        ``signum`` to every process, SIGKILL after ``timeout``. True once empty."""
        cg = self.backend.unit(m.name, handle.pid if handle else None)
        outside = handle is not None and not handle.unit  # adopted from a pre-cgroup agent

        def empty() -> bool:
            return (handle is None or m.gone.is_set()) and cg.empty()

        if empty():
            return True
        for sig, wait in ((signum, timeout), (signal.SIGKILL, KILL_GRACE_S)):
            try:
                cg.kill(sig)
            except CgroupError as exc:
                log.warning("%s: %s", m.name, exc)
            if outside and handle is not None:
                cast(ProcessDriver, self._driver(m)).signal(handle, sig)
            if await _until(empty, wait):
                return True
            if sig == signal.SIGKILL:
                break
            log.warning("%s: still running %ss after %s: SIGKILL", m.name, wait,
                        signal.Signals(sig).name)
        return empty()

    def _release(self, m: Managed) -> None:
        """Remove the unit's cgroup: it runs nothing any more."""
        try:
            self.backend.unit(m.name).remove()
        except CgroupError as exc:
            log.warning("%s: cannot remove its cgroup: %s", m.name, exc)

    def _oom_kills(self, m: Managed) -> int:
        try:
            return self.backend.unit(m.name).oom_kills()
        except CgroupError:
            return 0

    async def _sweep(self, name: str) -> None:
        """A cgroup of ours that no adopted program explains: kill what is in it (a
        program whose record was lost, or the leftovers of one that died) and remove it."""
        async with self.lock(name):
            m = self.units.get(name)
            if m is not None and not m.gone.is_set():
                return  # adopted after all
            cg = self.backend.unit(name)
            if not cg.empty():
                log.warning("%s: killing processes no record explains: %s", name, cg.pids())
                try:
                    cg.kill(signal.SIGKILL)
                except CgroupError as exc:
                    log.warning("%s: %s", name, exc)
                await _until(cg.empty, KILL_GRACE_S)
            try:
                cg.remove()
            except CgroupError as exc:
                log.warning("%s: cannot remove its cgroup: %s", name, exc)

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
            m.restarts = int(record.get("restarts", 0))
            m.streak = int(record.get("streak", 0))
            driver = self.drivers.get(spec.get("driver", ""))
            same_boot = record.get("boot_id") == self.boot_id
            handle: Optional[Handle] = None
            if driver is not None and same_boot:
                try:
                    handle = driver.recover(record["handle"])
                except DriverError as exc:
                    log.warning("%s: cannot recover: %s", name, exc)
            if handle is not None and getattr(driver, "supervises", False):
                self.systemd.adopt(m, handle)
            elif handle is not None:
                m.handle, m.state = handle, protocol.RUNNING
                m.gone.clear()
                loop = asyncio.get_running_loop()
                m.started_mono = loop.time() - max(time.time() - handle.started_at, 0.0)
                m.oom_before = self._oom_kills(m)
                self.spawn(self._life(m, handle))
                self._check_health(m, handle)
                adopted.add(name)
                log.info("%s: re-adopted pid %d", name, handle.pid)
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
        for name in self.backend.units():
            if name not in adopted:
                self.spawn(self._sweep(name))
        for m in dead:  # ended unseen: an unknown result, for Restart= to judge
            self.spawn(self._dead_on_arrival(m))
        self.systemd.recovered(records)
        for name in set(self.desired) | set(self.units):
            self.spawn(self.converge(name))
        self._ensure_fencing()

    async def _dead_on_arrival(self, m: Managed) -> None:
        async with self.lock(m.name):
            if self.units.get(m.name) is m and m.state == protocol.FAILED and self._wanted(m):
                await self._after_run(m, restart.UNKNOWN, m.error, ran_s=0.0)


def _adoptable(name: str, spec: object) -> Optional[Dict[str, Any]]:
    """``spec`` (from the unit record of ``name`` on disk) if this agent can run it."""
    try:
        checked = specs.check_spec(spec)
    except specs.SpecError as exc:
        log.warning("%s: its record holds a spec this agent refuses: %s", name, exc)
        return None
    return checked if checked["name"] == name else None


async def _wait(event: asyncio.Event, timeout: Optional[float]) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


async def _until(predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (None: no limit) has passed."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not predicate():
        if deadline is not None and loop.time() >= deadline:
            return False
        await asyncio.sleep(EMPTY_POLL_S)
    return True
