"""The runner for units whose driver forks the program itself (exec, and java through it):
it runs them as systemd runs a service.

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
  prepared a unit that restarts at once (RestartSec= under PREPARED_UNDER_S, one
           ExecStart=, no ExecStartPre=/Post=) keeps a process for its next run waiting
           in its cgroups (fleetd.drivers.spare), prepared in a worker thread once the
           program runs: the restart execs it instead of forking and migrating (the
           migration's RCU grace period, ~13 ms, was most of a restart). The runs
           alternate between two cgroups below the unit's (LEAVES), so that the end of
           a run kills everything of that run - KillMode=control-group - and nothing of
           the prepared process, which has run nothing of the unit. Stop, removal, a
           settled unit and the agent's own stop discard it; it is never the main pid.

The unit's cgroup: fleetd.agent.cgroup_ops; its [X-Check]: fleetd.agent.checks; the
control commands and the exit that follows a run: fleetd.agent.runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from typing import Any, Dict, Optional, Set

from fleetd import protocol
from fleetd.agent import procwatch, restart
from fleetd.agent.cgroup_ops import UnitCgroups
from fleetd.agent.checks import UnitChecks
from fleetd.agent.managed import Managed
from fleetd.agent.runner import ProcessPort, finish
from fleetd.agent.runs import Runs
from fleetd.drivers.base import (
    Driver,
    DriverError,
    Handle,
    ProcessDriver,
    Spare,
    StartContext,
)
from fleetd.drivers.spare import LEAVES
from fleetd.wire.unitspec import KILL_GRACE_S, kill_signal, timeout_stop

log = logging.getLogger("fleet-agent")

# A unit whose restart comes sooner than this keeps a prepared process for it
# (fleetd.drivers.spare): the cgroup migration (~13 ms) would be most of its restart.
# Later restarts are dominated by their delay, and need no process waiting meanwhile.
PREPARED_UNDER_S = 0.05


def _process(driver: Driver) -> ProcessDriver:
    """``driver`` as the process driver its capabilities say it is."""
    assert driver.capabilities.control_commands, driver.name
    return driver  # type: ignore[return-value]


class ProcessUnits:
    """``port``: what it may ask of the supervisor; ``cgroups``: the units' cgroups."""

    def __init__(self, port: ProcessPort, cgroups: UnitCgroups) -> None:
        self.port = port
        self.cgroups = cgroups
        self.checks = UnitChecks(port.report, self.end_run)
        self.runs = Runs(port, cgroups, self._running, self._after_run)

    # --- starting ------------------------------------------------------------------
    async def start(self, m: Managed, driver: Driver, automatic: bool = False) -> None:
        """Start the unit (under its lock). ``automatic``: a restart by Restart=."""
        proc = _process(driver)
        m.cancel_timers()
        last_error, m.error = m.error, None
        loop = asyncio.get_running_loop()
        if not automatic:
            m.exit_status, m.streak = None, 0
        if not m.limiter.allow(loop.time()):
            hit = m.limiter.describe()
            finish(self.port, m, protocol.FAILED, f"{hit} (last: {last_error})" if automatic
                   and last_error else hit)
            self.discard_spare(m)
            self.cgroups.release(m.name)
            return
        if automatic:
            m.restarts += 1
        fast = self._fast(m, proc)
        spare, m.spare = m.spare, None
        old_leaf = m.handle.leaf if m.handle is not None else ""
        if spare is not None and not (fast and old_leaf and old_leaf != spare.leaf):
            spare.discard()
            spare = None
        # what is left of the last run goes (all of it: KillMode=control-group); only
        # the prepared process, which has run nothing of the unit, stays
        if not await self.cgroups.clear(m, signal.SIGKILL, KILL_GRACE_S,
                                        leaf=old_leaf if spare is not None else ""):
            if spare is not None:
                spare.discard()
            finish(self.port, m, protocol.FAILED, "processes of an earlier run of this unit "
                                                  "survived SIGKILL in its cgroup")
            return
        config = m.config
        timeout = config.get("timeout_start_s")
        m.deadline = loop.time() + timeout if timeout is not None else None
        ctx = self.port.context(m)
        if fast:
            ctx = dataclasses.replace(ctx, leaf=spare.leaf if spare is not None else LEAVES[0])
        if config.get("pre"):
            self._starting(m)
        for command in config.get("pre") or []:
            outcome, why = await self.runs.control(m, proc, ctx, command, "ExecStartPre")
            if outcome != restart.SUCCESS:
                await self._after_run(m, outcome, why, ran_s=0.0)
                return
        try:
            handle = self._take(m, proc, spare, ctx) if spare is not None else None
            if handle is None:
                handle = proc.start(config, ctx, m.command_index)
        except DriverError as exc:
            log.warning("%s: cannot start: %s", m.name, exc)
            await self._after_run(m, restart.EXIT_CODE, str(exc), ran_s=0.0)
            return
        self._running(m, proc, handle)
        if m.oneshot:
            self.runs.arm_start_timeout(m, proc, handle)
            self._starting(m)
            return
        if config.get("post"):
            self._starting(m)
            ok = await self.runs.posts(m, proc, ctx, handle)
            if not ok or m.handle is not handle or m.gone.is_set():
                return  # the run's end is handled where its exit is seen
        m.state = protocol.RUNNING
        self.port.report(m)
        if fast:
            self.port.spawn(self._prepare(m, proc, handle))

    def _starting(self, m: Managed) -> None:
        """Report ``starting`` while ExecStartPre=/Post= or a oneshot run (once)."""
        if m.state != protocol.STARTING:
            m.state = protocol.STARTING
            self.port.report(m)

    def _running(self, m: Managed, proc: ProcessDriver, handle: Handle) -> None:
        """The main process is up: remember it (on disk too) and watch it."""
        m.handle = handle
        m.gone.clear()
        m.forced = None
        m.started_mono = asyncio.get_running_loop().time()
        m.oom_before = self.cgroups.oom_kills(m.name)
        self.port.save(m)
        self._watch(m, proc, handle)

    def _watch(self, m: Managed, proc: ProcessDriver, handle: Handle) -> None:
        self.port.spawn(self._life(m, proc, handle))
        self.checks.start(m, handle, proc, self._run_context(m, handle))

    def _run_context(self, m: Managed, handle: Handle) -> StartContext:
        """A context for processes of ``handle``'s run: they join its cgroup."""
        return dataclasses.replace(self.port.context(m), leaf=handle.leaf)

    # --- prepared processes (fleetd.drivers.spare) -------------------------------------
    def _fast(self, m: Managed, proc: ProcessDriver) -> bool:
        """Does ``m`` keep a prepared process for its next run? Only a unit that
        restarts at once, whose start is its one ExecStart= (ExecStartPre=/Post= fork
        and migrate anyway), where the driver can."""
        config = m.config
        if m.oneshot or config.get("pre") or config.get("post"):
            return False
        opts = restart.restart_options(config)
        if opts["policy"] == "no" or opts["restart_s"] >= PREPARED_UNDER_S:
            return False
        return proc.can_prepare(config)

    def _take(self, m: Managed, proc: ProcessDriver, spare: Spare,
              ctx: StartContext) -> Optional[Handle]:
        """The program from the prepared process; None (forked as usual) if it failed."""
        try:
            return proc.take(spare, m.config, ctx, m.command_index)
        except DriverError as exc:
            log.warning("%s: the prepared process failed, forking: %s", m.name, exc)
            return None

    async def _prepare(self, m: Managed, proc: ProcessDriver, handle: Handle) -> None:
        """Prepare the next run's process beside ``handle``'s run, in a worker thread
        (its cgroup migration blocks ~13 ms); kept if the run still goes on."""
        leaf = LEAVES[1] if handle.leaf == LEAVES[0] else LEAVES[0]
        ctx = dataclasses.replace(self.port.context(m), leaf=leaf)
        try:
            spare = await asyncio.get_running_loop().run_in_executor(
                None, proc.prepare, m.config, ctx)
        except DriverError as exc:
            log.warning("%s: no prepared process for its next run: %s", m.name, exc)
            return
        async with self.port.lock(m.name):
            if (self.port.current(m.name) is m and m.handle is handle and m.spare is None
                    and not m.gone.is_set() and m.state == protocol.RUNNING):
                m.spare = spare
                return
            spare.discard()  # the run ended, or the unit went, while it was prepared
            if (self.port.current(m.name) in (None, m) and m.gone.is_set()
                    and m.state in (protocol.STOPPED, protocol.EXITED, protocol.FAILED)):
                self.cgroups.release(m.name)  # a stop meanwhile could not remove it

    def discard_spare(self, m: Managed) -> None:
        spare, m.spare = m.spare, None
        if spare is not None:
            spare.discard()

    def close(self) -> None:
        """The agent stops: its programs run on, its prepared processes must not."""
        for m in self.port.all_units():
            self.discard_spare(m)

    # --- ending a run ---------------------------------------------------------------------
    def end_run(self, m: Managed, driver: Driver, outcome: str, why: str) -> bool:
        """End the unit's running program for a reason of the agent's own (a failing
        health check: restart.WATCHDOG), with KillSignal=, then SIGKILL after
        TimeoutStopSec=. Restart= then judges ``outcome`` like any other end. False if
        no program of the unit runs."""
        if m.handle is None or m.gone.is_set() or m.state == protocol.STOPPING:
            return False
        m.forced = (outcome, why)
        self.port.spawn(self.runs.terminate(m, _process(driver), m.handle))
        return True

    # --- exits ------------------------------------------------------------------------
    async def _life(self, m: Managed, proc: ProcessDriver, handle: Handle) -> None:
        """Wait for the main process to end, then decide what follows (under the lock)."""
        end = await procwatch.watch(handle.pid, handle.start_ticks)
        if m.handle is handle:
            m.gone.set()  # before taking the lock: a stop holding it waits for this
            self.checks.stop(m)
        if m.handle is not handle:
            return  # a stale watcher of an earlier program of this unit
        if m.state == protocol.STOPPING:
            m.exit_status = end.code
            return  # stop reports the outcome
        async with self.port.lock(m.name):
            if (self.port.current(m.name) is not m or m.handle is not handle
                    or m.state in (protocol.STOPPING, protocol.STOPPED)):
                return
            await self.runs.ended(m, proc, handle, end)

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
            self.port.report(m)
            self._restart_after(m, delay)
            return  # the record stays until the next program's replaces it: it proves
            # nothing (its pid is dead), and a restarted agent restarts the unit by it
        self.port.delete_record(m.name)
        self.discard_spare(m)
        await self.cgroups.clear(m, signal.SIGKILL, KILL_GRACE_S)  # a failed ExecStartPre='s
        self.cgroups.release(m.name)
        finish(self.port, m, protocol.EXITED if outcome == restart.SUCCESS
               else protocol.FAILED, why)
        self.port.converge_later(m.name)

    def _restart_after(self, m: Managed, delay: float) -> None:
        m.restart_pending = True
        if delay <= 0:  # no timer: the next turn of the loop forks it
            self.port.spawn(self._restart(m))
            return
        loop = asyncio.get_running_loop()
        m.restart_timer = loop.call_later(delay, lambda: self.port.spawn(self._restart(m)))

    async def _restart(self, m: Managed) -> None:
        async with self.port.lock(m.name):
            if not m.restart_pending or m.state != protocol.STARTING:
                return  # stopped or replaced meanwhile
            m.restart_pending, m.restart_timer = False, None
            if not self.port.wanted(m):
                self.port.converge_later(m.name)
                return
            await self.port.start(m, automatic=True)

    # --- stopping ------------------------------------------------------------------
    async def stop(self, m: Managed, driver: Optional[Driver]) -> None:
        """ExecStop=, KillSignal= to the whole cgroup, SIGKILL after TimeoutStopSec=."""
        m.cancel_timers()
        self.discard_spare(m)
        handle = m.handle
        if handle is None or driver is None or m.gone.is_set():
            await self.cgroups.clear(m, signal.SIGKILL, KILL_GRACE_S)
            self.cgroups.release(m.name)
            m.state = protocol.STOPPED
            self.port.delete_record(m.name)
            self.port.report(m)
            return
        proc = _process(driver)
        m.state = protocol.STOPPING
        self.port.report(m)
        config = m.config
        timeout = timeout_stop(config)  # None: wait as long as it takes
        ctx = self.port.context(m)
        for command in config.get("stop") or []:
            if m.gone.is_set():
                break
            _outcome, why = await self.runs.control(m, proc, ctx, command, "ExecStop",
                                                    {"MAINPID": str(handle.pid)}, timeout)
            if why:
                log.warning("%s: %s", m.name, why)
        await self.cgroups.clear(m, kill_signal(config), timeout, handle=handle, driver=proc)
        if not m.gone.is_set():
            m.error = f"pid {handle.pid} survived SIGKILL"
        self.cgroups.release(m.name)
        m.state = protocol.STOPPED
        self.port.delete_record(m.name)
        self.port.report(m)

    async def forget(self, m: Managed, driver: Optional[Driver]) -> None:
        self.discard_spare(m)
        self.cgroups.release(m.name)

    # --- recovery -----------------------------------------------------------------------
    def adopt(self, m: Managed, driver: Driver, handle: Handle) -> bool:
        """A program a previous agent started that provably still runs: watch it."""
        m.handle, m.state = handle, protocol.RUNNING
        m.gone.clear()
        loop = asyncio.get_running_loop()
        m.started_mono = loop.time() - max(time.time() - handle.started_at, 0.0)
        m.oom_before = self.cgroups.oom_kills(m.name)
        self._watch(m, _process(driver), handle)
        log.info("%s: re-adopted pid %d", m.name, handle.pid)
        if handle.leaf and self._fast(m, _process(driver)):
            self.port.spawn(self._readopted(m, _process(driver), handle))
        return True

    async def _readopted(self, m: Managed, proc: ProcessDriver, handle: Handle) -> None:
        """The previous agent's prepared process is useless (its pipes died with that
        agent): what is left of it goes, and a new one is prepared."""
        other = LEAVES[1] if handle.leaf == LEAVES[0] else LEAVES[0]
        async with self.port.lock(m.name):
            if m.handle is not handle or m.gone.is_set():
                return
            await self.cgroups.clear(m, signal.SIGKILL, KILL_GRACE_S, leaf=other)
        await self._prepare(m, proc, handle)

    def recovered(self, records: Dict[str, Any], desired: Set[str],
                  adopted: Set[str]) -> None:
        """Sweep every cgroup of ours that no adopted program explains."""
        for name in self.cgroups.names():
            if name not in adopted:
                self.port.spawn(self._sweep(name))

    async def _sweep(self, name: str) -> None:
        async with self.port.lock(name):
            m = self.port.current(name)
            if m is not None and not m.gone.is_set():
                return  # adopted after all
            await self.cgroups.sweep(name)

    async def dead_on_arrival(self, m: Managed) -> None:
        """A program that ended while no agent watched: an unknown result, for Restart=."""
        async with self.port.lock(m.name):
            if (self.port.current(m.name) is m and m.state == protocol.FAILED
                    and self.port.wanted(m)):
                await self._after_run(m, restart.UNKNOWN, m.error, ran_s=0.0)
