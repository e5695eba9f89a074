"""One run of a process unit, for the process runner (fleetd.agent.process_units): its
control commands (ExecStartPre=, ExecStartPost=, ExecStop=), a oneshot's
TimeoutStartSec=, ending a run the agent gave up on, and what its main process's exit
means (the result Restart= judges, a oneshot's next ExecStart=).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from typing import Awaitable, Callable, Dict, Optional, Tuple

from fleetd.agent import procwatch, restart
from fleetd.agent.cgroup_ops import UnitCgroups
from fleetd.agent.managed import Managed
from fleetd.agent.runner import Port, wait_event
from fleetd.cgroups import Limits
from fleetd.drivers.base import DriverError, Handle, ProcessDriver, StartContext
from fleetd.wire.unitspec import Command, kill_signal, timeout_stop

log = logging.getLogger("fleet-agent")

# (unit, driver, handle): its new main process is up
Running = Callable[[Managed, ProcessDriver, Handle], None]
# (unit, outcome, why, seconds it ran): restart by policy, or settle
AfterRun = Callable[[Managed, str, Optional[str], float], Awaitable[None]]


class Runs:
    def __init__(self, port: Port, cgroups: UnitCgroups, running: Running,
                 after_run: AfterRun) -> None:
        self.port = port
        self.cgroups = cgroups
        self._running = running
        self._after_run = after_run

    # --- control commands ---------------------------------------------------------------
    async def control(self, m: Managed, proc: ProcessDriver, ctx: StartContext,
                      command: Command, option: str,
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

    async def posts(self, m: Managed, proc: ProcessDriver, ctx: StartContext,
                    handle: Handle) -> bool:
        """ExecStartPost=, with $MAINPID; a failure ends the program (systemd: the
        start failed, so the unit goes down and Restart= decides)."""
        for command in m.config.get("post") or []:
            outcome, why = await self.control(m, proc, ctx, command, "ExecStartPost",
                                              {"MAINPID": str(handle.pid)})
            if outcome != restart.SUCCESS:
                if m.handle is handle and not m.gone.is_set():
                    m.forced = (outcome, why or "ExecStartPost= failed")
                    self.port.spawn(self.terminate(m, proc, handle))
                return False
        return True

    # --- giving up on a run --------------------------------------------------------------
    def arm_start_timeout(self, m: Managed, proc: ProcessDriver, handle: Handle) -> None:
        """Type=oneshot: TimeoutStartSec= bounds its whole run."""
        if m.deadline is None:
            return
        loop = asyncio.get_running_loop()

        def expired() -> None:
            if m.handle is handle and not m.gone.is_set():
                timeout = restart.format_seconds(float(m.config.get("timeout_start_s") or 0))
                m.forced = (restart.TIMEOUT, f"did not finish within TimeoutStartSec={timeout}")
                self.port.spawn(self.terminate(m, proc, handle))

        m.timeout_timer = loop.call_at(m.deadline, expired)

    async def terminate(self, m: Managed, proc: ProcessDriver, handle: Handle) -> None:
        """End a program we gave up on: KillSignal=, SIGKILL after TimeoutStopSec=."""
        proc.signal(handle, kill_signal(m.config))
        if not await wait_event(m.gone, timeout_stop(m.config)):
            proc.signal(handle, signal.SIGKILL)

    # --- the end of a run -------------------------------------------------------------------
    async def ended(self, m: Managed, proc: ProcessDriver, handle: Handle,
                    end: restart.Exit) -> None:
        """The main process ended (under the unit's lock): what it left goes too, and
        the run's result decides what follows."""
        if m.timeout_timer is not None:
            m.timeout_timer.cancel()
            m.timeout_timer = None
        config = m.config
        loop = asyncio.get_running_loop()
        ran_s = loop.time() - m.started_mono
        forced, m.forced = m.forced, None
        # the main process was the unit: what it left behind goes too (KillMode=control-group)
        await self.cgroups.clear(m, kill_signal(config), timeout_stop(config),
                                 leaf=handle.leaf)
        commands = config.get("commands") or []
        ignore = bool(commands and commands[m.command_index].get("ignore_failure"))
        oom = end.code == -signal.SIGKILL and self.cgroups.oom_kills(m.name) > m.oom_before
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
                if await self._next_command(m, proc):
                    return
                outcome, why = restart.EXIT_CODE, m.error
            else:
                m.command_index = 0
                ok = await self.posts(m, proc, self.port.context(m), handle)
                if not ok:
                    outcome, why = restart.EXIT_CODE, "ExecStartPost= failed"
        m.command_index = 0
        await self._after_run(m, outcome, why, ran_s)

    async def _next_command(self, m: Managed, proc: ProcessDriver) -> bool:
        try:
            handle = proc.start(m.config, self.port.context(m), m.command_index)
        except DriverError as exc:
            m.error = str(exc)
            return False
        self._running(m, proc, handle)
        self.arm_start_timeout(m, proc, handle)
        return True
