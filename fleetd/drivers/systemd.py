"""The systemd driver: the host's own systemd runs the unit; the agent only asks it.

On a host whose PID 1 is systemd, a Driver=systemd unit is handed to systemd as a
runtime unit (/run/systemd/system/NAME, gone at reboot like everything the agent starts)
and systemd does the rest: it forks, tracks the main pid through forking daemons, restarts
by Restart=, and enforces MemoryMax=/CPUQuota=/TasksMax= in its own cgroups. Doing any of
that ourselves as well would fight systemd, so the agent does not watch pids for these
units: it reads systemd's view with ``systemctl show`` (``status``/``statuses``), which
the supervisor polls, and maps it to fleetd's states.

Everything goes through the ``systemctl`` command rather than D-Bus: the agent side is
stdlib + psutil only, and systemctl is on every systemd host, old ones included.

This module composes three others, one job each: fleetd.drivers.systemd_files (the unit
file and drop-in under /run, and the unit name that becomes their file name),
fleetd.drivers.systemctl (the systemctl calls) and fleetd.drivers.systemd_show (what
``systemctl show`` prints, mapped to fleetd's states).

The unit file arrives already rendered by fleetd (fleetd.units.systemd_text: fleetd's
``[X-...]`` sections removed). The driver adds one drop-in with FLEET_UNIT and
FLEET_MACHINE_ID in the environment, as the exec driver gives its programs, so the unit
file itself is installed exactly as the user wrote it.

Identity for re-adoption is the unit name: systemd knows which process is the unit's, so
pid + start time are not needed; a runtime unit that systemd still knows after an agent
restart is the one this agent installed (and none survives a reboot).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import psutil

from fleetd.drivers.base import (
    HOST_SUPERVISED,
    DriverError,
    Handle,
    ServiceStatus,
    StartContext,
)
from fleetd.drivers.systemctl import Systemctl
from fleetd.drivers.systemd_files import UNIT_DIR, UnitFiles, check_name
from fleetd.wire import names
from fleetd.wire.unitspec import UnitConfig


class SystemdDriver:
    """Driver=systemd. Besides the Driver protocol (start, signal, recover) it offers
    ``status``/``statuses``/``stop``/``forget`` for a supervisor that polls instead of
    watching a pid (its capabilities say ``supervises_itself``), and ``available`` for
    the host's facts."""

    name = "systemd"
    # systemd restarts, limits and reaps; the agent only starts, stops and polls
    capabilities = HOST_SUPERVISED

    def __init__(self, unit_dir: str = UNIT_DIR, systemctl: str = "systemctl") -> None:
        self.files = UnitFiles(unit_dir)
        self.systemctl = Systemctl(systemctl)

    # --- facts --------------------------------------------------------------------------
    def available(self) -> bool:
        """Can this host run Driver=systemd units? PID 1 must be systemd (sd_booted:
        /run/systemd/system exists), systemctl must reach it, and we must be able to
        install runtime units."""
        try:
            with open("/proc/1/comm") as f:
                if f.read().strip() != "systemd":
                    return False
        except OSError:
            return False
        return self.files.writable() and self.systemctl.reachable()

    # --- starting --------------------------------------------------------------------------
    def start(self, config: UnitConfig, ctx: StartContext, command_index: int = 0) -> Handle:
        """Install the unit, make systemd load it and start it.

        ``systemctl start`` waits for the start job, so what systemd knows at start
        (ExecStartPre= failed, a Type=exec/forking/notify program that did not come up,
        a bad unit file) is raised here as a DriverError with systemd's reason. Only
        Type=oneshot starts with --no-block: its job lasts as long as the program,
        which the supervisor then follows through ``status``."""
        name = check_name(ctx.unit)
        text = config.get("unit_text")
        if not isinstance(text, str) or not text.strip():
            raise DriverError(f"{name}: no unit text for the systemd driver")
        changed = self.files.install(name, text, ctx.machine_id)
        if changed or self._needs_reload(name):
            self.reload()
        # a unit that failed before (or hit its start limit) starts afresh, as a user's
        # `systemctl start` after `reset-failed` would
        self.systemctl.reset_failed(name)
        self.systemctl.start(name, no_block=config.get("type") == "oneshot",
                             timeout=config.get("timeout_start_s"))
        status = self.status(name)
        pid = int(status["pid"] or 0)
        return Handle(driver=self.name, pid=pid, create_time=_create_time(pid),
                      started_at=time.time(), invocation_id=ctx.invocation_id, unit=name)

    def reload(self) -> None:
        self.systemctl.reload()

    # --- state -------------------------------------------------------------------------------
    def status(self, name: str) -> ServiceStatus:
        """One unit as fleetd sees it (see ``statuses``)."""
        return self.statuses([name])[name]

    def statuses(self, names: Sequence[str]) -> Dict[str, ServiceStatus]:
        """Every named unit's state from one ``systemctl show`` call, so polling all of a
        host's systemd units costs one process per poll. Each value has: ``state``
        (starting/running/stopping/stopped/exited/failed), ``pid``, ``restarts``
        (systemd's NRestarts), ``exit_status`` (negative: killed by that signal),
        ``error`` (why it failed, for users), ``known`` (systemd has the unit loaded),
        and systemd's own ``active_state``/``sub_state``/``result``."""
        return self.systemctl.statuses([check_name(n) for n in names])

    # --- stopping -----------------------------------------------------------------------------
    def stop(self, name: str, timeout: Optional[float] = None) -> ServiceStatus:
        """``systemctl stop`` and wait for it: systemd sends KillSignal=, waits
        TimeoutStopSec= and SIGKILLs, so this returns with the unit's processes gone.
        ``timeout`` is the unit's TimeoutStopSec= (None: none), bounding our wait."""
        name = check_name(name)
        self.systemctl.stop(name, timeout)
        status = self.status(name)
        if status["state"] in ("exited", "failed") and status["active_state"] != "failed":
            status["state"] = "stopped"  # it ended because we stopped it
        return status

    def forget(self, name: str, timeout: Optional[float] = None) -> None:
        """Stop the unit if it runs, remove its files and make systemd drop it, so nothing
        of it is left on the host (not even a failed state in `systemctl --failed`)."""
        name = check_name(name)
        if self.status(name)["active_state"] not in ("inactive", "failed"):
            self.stop(name, timeout)
        if self.files.remove(name):
            self.reload()
        self.systemctl.reset_failed(name)

    def signal(self, handle: Handle, signum: int) -> None:
        """Every process of the unit, through systemd (it knows its cgroup)."""
        if not handle.unit:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if handle.pid > 0:
                    os.kill(handle.pid, signum)
            return
        self.systemctl.kill(check_name(handle.unit), signum)

    # --- recovery --------------------------------------------------------------------------------
    def installed(self) -> List[str]:
        """Every unit this driver installed and has not forgotten (it carries our drop-in),
        so that a restarted agent that lost a record can still forget what is no longer
        desired, instead of leaving it running unnoticed."""
        return self.files.installed()

    def recover(self, record: Dict[str, Any]) -> Optional[Handle]:
        """The handle of a unit this driver installed earlier, if systemd still has it
        (it may have failed or exited since: ``status`` says so). None if its runtime
        file is gone (a reboot) or systemd does not know it."""
        handle = Handle.from_record(record)
        if not names.is_valid(handle.unit) or names.is_template(handle.unit):
            return None
        if not self.files.has(handle.unit):
            return None
        try:
            status = self.status(handle.unit)
        except DriverError:
            return None
        if not status["known"]:
            return None
        pid = int(status["pid"] or 0)
        return dataclasses.replace(handle, pid=pid, create_time=_create_time(pid))

    # --- plumbing -------------------------------------------------------------------------
    def _needs_reload(self, name: str) -> bool:
        """Files unchanged, but has systemd loaded them? (An agent that died between
        writing and reloading leaves them unloaded.)"""
        props = self.statuses([name])[name]
        return bool(props["load_state"] != "loaded" or props["need_reload"])


def _create_time(pid: int) -> float:
    if pid <= 0:
        return 0.0
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
