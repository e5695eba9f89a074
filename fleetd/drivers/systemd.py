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
import re
import shutil
import signal as signals
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

import psutil

from fleetd.cgroups.limits import format_size
from fleetd.drivers.base import (
    HOST_SUPERVISED,
    DriverError,
    Handle,
    ServiceStatus,
    StartContext,
)
from fleetd.wire import names
from fleetd.wire.unitspec import UnitConfig

UNIT_DIR = "/run/systemd/system"
DROPIN = "50-fleetd.conf"
# what status() reads, in one `systemctl show` call per poll
PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "NRestarts",
              "ExecMainStatus", "ExecMainCode", "Result", "MemoryMax", "LoadError",
              "NeedDaemonReload")
EXIT_EXEC = 203  # systemd's exit status when it cannot execute the command
SYSTEMCTL_TIMEOUT_S = 30.0  # for calls that do not wait on a unit (show, daemon-reload)
STOP_GRACE_S = 15.0  # beyond the unit's own timeout: systemd kills, then reports
# waitid's si_code, as systemctl show prints ExecMainCode
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3

# fleetd's states (fleetd.protocol) for systemd's ActiveState; inactive and failed need
# the Result and are decided in _state()
_ACTIVE = {"active": "running", "reloading": "running", "activating": "starting",
           "deactivating": "stopping", "maintenance": "stopping", "refreshing": "running"}


class SystemdDriver:
    """Driver=systemd. Besides the Driver protocol (start, signal, recover) it offers
    ``status``/``statuses``/``stop``/``forget`` for a supervisor that polls instead of
    watching a pid (its capabilities say ``supervises_itself``), and ``available`` for
    the host's facts."""

    name = "systemd"
    # systemd restarts, limits and reaps; the agent only starts, stops and polls
    capabilities = HOST_SUPERVISED

    def __init__(self, unit_dir: str = UNIT_DIR, systemctl: str = "systemctl") -> None:
        self.unit_dir = unit_dir
        self.systemctl = systemctl

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
        if not os.path.isdir(self.unit_dir) or not os.access(self.unit_dir, os.W_OK):
            return False
        try:
            out = self._systemctl("show", "-p", "Version")
        except DriverError:
            return False
        return out.returncode == 0 and out.stdout.startswith("Version=")

    # --- starting --------------------------------------------------------------------------
    def start(self, config: UnitConfig, ctx: StartContext, command_index: int = 0) -> Handle:
        """Install the unit, make systemd load it and start it.

        ``systemctl start`` waits for the start job, so what systemd knows at start
        (ExecStartPre= failed, a Type=exec/forking/notify program that did not come up,
        a bad unit file) is raised here as a DriverError with systemd's reason. Only
        Type=oneshot starts with --no-block: its job lasts as long as the program,
        which the supervisor then follows through ``status``."""
        name = _check_name(ctx.unit)
        text = config.get("unit_text")
        if not isinstance(text, str) or not text.strip():
            raise DriverError(f"{name}: no unit text for the systemd driver")
        changed = self._write(self._unit_path(name), text)
        changed |= self._write(os.path.join(self._dropin_dir(name), DROPIN),
                               _dropin(name, ctx.machine_id))
        if changed or self._needs_reload(name):
            self.reload()
        # a unit that failed before (or hit its start limit) starts afresh, as a user's
        # `systemctl start` after `reset-failed` would
        self._systemctl("reset-failed", "--", name)
        argv = ["start", "--", name]
        if config.get("type") == "oneshot":
            argv.insert(1, "--no-block")
        timeout = config.get("timeout_start_s")
        out = self._systemctl(*argv, timeout=None if timeout is None
                              else float(timeout) + STOP_GRACE_S)
        if out.returncode != 0:
            raise DriverError(self._why(name, out.stderr))
        status = self.status(name)
        pid = int(status["pid"] or 0)
        return Handle(driver=self.name, pid=pid, create_time=_create_time(pid),
                      started_at=time.time(), invocation_id=ctx.invocation_id, unit=name)

    def reload(self) -> None:
        out = self._systemctl("daemon-reload")
        if out.returncode != 0:
            raise DriverError(f"systemctl daemon-reload: {_first_line(out.stderr)}")

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
        names = [_check_name(n) for n in names]
        if not names:
            return {}
        out = self._systemctl("show", "-p", ",".join(PROPERTIES), "--", *names)
        if out.returncode != 0:
            raise DriverError(f"systemctl show: {_first_line(out.stderr)}")
        blocks = _parse_show(out.stdout)
        if len(blocks) != len(names):
            raise DriverError(f"systemctl show: {len(blocks)} answers for {len(names)} units")
        return {name: _status(props) for name, props in zip(names, blocks)}

    # --- stopping -----------------------------------------------------------------------------
    def stop(self, name: str, timeout: Optional[float] = None) -> ServiceStatus:
        """``systemctl stop`` and wait for it: systemd sends KillSignal=, waits
        TimeoutStopSec= and SIGKILLs, so this returns with the unit's processes gone.
        ``timeout`` is the unit's TimeoutStopSec= (None: none), bounding our wait."""
        name = _check_name(name)
        out = self._systemctl("stop", "--", name, timeout=None if timeout is None
                              else float(timeout) + STOP_GRACE_S)
        if out.returncode != 0 and "not loaded" not in out.stderr:
            raise DriverError(f"systemctl stop {name}: {_first_line(out.stderr)}")
        status = self.status(name)
        if status["state"] in ("exited", "failed") and status["active_state"] != "failed":
            status["state"] = "stopped"  # it ended because we stopped it
        return status

    def forget(self, name: str, timeout: Optional[float] = None) -> None:
        """Stop the unit if it runs, remove its files and make systemd drop it, so nothing
        of it is left on the host (not even a failed state in `systemctl --failed`)."""
        name = _check_name(name)
        if self.status(name)["active_state"] not in ("inactive", "failed"):
            self.stop(name, timeout)
        removed = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._unit_path(name))
            removed = True
        if os.path.isdir(self._dropin_dir(name)):
            shutil.rmtree(self._dropin_dir(name), ignore_errors=True)
            removed = True
        if removed:
            self.reload()
        self._systemctl("reset-failed", "--", name)

    def signal(self, handle: Handle, signum: int) -> None:
        """Every process of the unit, through systemd (it knows its cgroup)."""
        if not handle.unit:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if handle.pid > 0:
                    os.kill(handle.pid, signum)
            return
        self._systemctl("kill", f"--signal={int(signum)}", "--", _check_name(handle.unit))

    # --- recovery --------------------------------------------------------------------------------
    def installed(self) -> List[str]:
        """Every unit this driver installed and has not forgotten (it carries our drop-in),
        so that a restarted agent that lost a record can still forget what is no longer
        desired, instead of leaving it running unnoticed."""
        try:
            entries = os.listdir(self.unit_dir)
        except OSError:
            return []
        return sorted(e for e in entries if names.is_valid(e)
                      and os.path.exists(os.path.join(self._dropin_dir(e), DROPIN)))

    def recover(self, record: Dict[str, Any]) -> Optional[Handle]:
        """The handle of a unit this driver installed earlier, if systemd still has it
        (it may have failed or exited since: ``status`` says so). None if its runtime
        file is gone (a reboot) or systemd does not know it."""
        handle = Handle.from_record(record)
        if not names.is_valid(handle.unit) or names.is_template(handle.unit):
            return None
        if not os.path.exists(self._unit_path(handle.unit)):
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
    def _unit_path(self, name: str) -> str:
        return os.path.join(self.unit_dir, name)

    def _dropin_dir(self, name: str) -> str:
        return os.path.join(self.unit_dir, name + ".d")

    def _needs_reload(self, name: str) -> bool:
        """Files unchanged, but has systemd loaded them? (An agent that died between
        writing and reloading leaves them unloaded.)"""
        props = self.statuses([name])[name]
        return bool(props["load_state"] != "loaded" or props["need_reload"])

    def _write(self, path: str, text: str) -> bool:
        """Write atomically (systemd must never read half a file); False if unchanged."""
        try:
            with open(path) as f:
                if f.read() == text:
                    return False
        except OSError:
            pass
        directory = os.path.dirname(path)
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            tmp = os.path.join(directory, f".{os.path.basename(path)}.fleetd-tmp")
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            raise DriverError(f"cannot install {path}: {exc.strerror}") from None
        return True

    def _why(self, name: str, stderr: str) -> str:
        """systemd's reason a start failed: the unit's result, its exit, a bad unit file,
        and the last lines it logged."""
        parts = [f"systemctl start {name}: {_first_line(stderr) or 'failed'}"]
        with contextlib.suppress(DriverError):
            st = self.status(name)
            if st["load_error"]:
                parts.append(st["load_error"])
            if st["error"]:
                parts.append(st["error"])
            if st.get("exit_status") == EXIT_EXEC:  # without waiting on the journal
                shown = self._systemctl("show", "-p", "ExecStart", "--value", "--", name).stdout
                path = re.search(r"path=(\S+)", shown)
                if path:
                    parts.append(f"systemd could not execute {path.group(1)}")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            journal = subprocess.run(
                ["journalctl", "-u", name, "-n", "5", "-o", "cat", "--no-pager", "-q"],
                capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
            lines = [ln for ln in journal.stdout.splitlines() if ln.strip()]
            if lines:
                parts.append("journal: " + " | ".join(lines))
        return "; ".join(parts)

    def _systemctl(self, *args: str, timeout: Optional[float] = SYSTEMCTL_TIMEOUT_S
                   ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C")
        try:
            return subprocess.run([self.systemctl, *args], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, env=env)
        except FileNotFoundError:
            raise DriverError(f"{self.systemctl} not found: is this a systemd host?") from None
        except subprocess.TimeoutExpired:
            raise DriverError(f"systemctl {' '.join(args)}: no answer within "
                              f"{timeout:.0f}s") from None


def _check_name(name: str) -> str:
    """A service unit name, never a path: it becomes a file name under /run."""
    why = names.problem(name)
    if why is None and names.is_template(name):
        why = f"{name}: a template is never run itself"
    if why is not None:
        raise DriverError(why)
    return name


def _dropin(name: str, machine_id: str) -> str:
    def quote(word: str) -> str:  # systemd's quoting, and % is a specifier there
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'

    return ("# written by fleet-agent: which fleetd unit and machine this is\n"
            "[Service]\n"
            f"Environment={quote('FLEET_UNIT=' + name)} "
            f"{quote('FLEET_MACHINE_ID=' + machine_id)}\n")


def _parse_show(text: str) -> List[Dict[str, str]]:
    """``systemctl show`` for several units: KEY=VALUE blocks separated by blank lines."""
    blocks: List[Dict[str, str]] = []
    current: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    if current:
        blocks.append(current)
    return blocks


def _int(value: Optional[str]) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _status(props: Dict[str, str]) -> ServiceStatus:
    active, sub = props.get("ActiveState", ""), props.get("SubState", "")
    result = props.get("Result", "")
    code, status = _int(props.get("ExecMainCode")), _int(props.get("ExecMainStatus"))
    exit_status: Optional[int] = None
    if code == CLD_EXITED:
        exit_status = status
    elif code in (CLD_KILLED, CLD_DUMPED):
        exit_status = -status
    load_state = props.get("LoadState", "")
    pid = _int(props.get("MainPID"))
    state = _state(active, sub, result, code)
    error = None
    if state == "failed" or (result not in ("", "success") and state != "running"):
        error = _describe(result, exit_status, props.get("MemoryMax", ""))
    load_error = props.get("LoadError", "")
    return {
        "state": state,
        "pid": pid or None,
        "restarts": _int(props.get("NRestarts")),
        "exit_status": exit_status,
        "error": error,
        "known": load_state not in ("", "not-found"),
        "load_state": load_state,
        "load_error": _load_error(load_error),
        "need_reload": props.get("NeedDaemonReload") == "yes",
        "active_state": active,
        "sub_state": sub,
        "result": result,
    }


def _state(active: str, sub: str, result: str, code: int) -> str:
    if sub == "auto-restart":
        return "starting"  # systemd waits RestartSec= and starts it again
    if active in _ACTIVE:
        return "exited" if (active, sub) == ("active", "exited") else _ACTIVE[active]
    if active == "failed" or result not in ("", "success"):
        return "failed"
    # Inactive without failure. systemd unloads such a unit at once (CollectMode=
    # inactive) and then shows no trace of its last run, so "exited" is only seen while
    # the run's record is still there; the supervisor, which knows whether it asked
    # for the stop, turns running -> stopped into exited when it did not.
    return "exited" if code == CLD_EXITED else "stopped"


def _signal_name(number: int) -> str:
    try:
        return signals.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _describe(result: str, exit_status: Optional[int], memory_max: str) -> str:
    """Why a unit failed, in systemd's terms plus a hint where systemd's are terse."""
    if exit_status is None:
        how = ""
    elif exit_status >= 0:
        how = f"exited {exit_status}"
    else:
        how = f"killed by {_signal_name(-exit_status)}"
    limited = memory_max not in ("", "infinity")
    if result == "oom-kill":
        return "killed by the OOM killer" + (f" (MemoryMax={_size(memory_max)})" if limited
                                             else "")
    if result == "signal" and exit_status == -signals.SIGKILL and limited:
        # cgroup v1 hosts: systemd cannot tell an OOM kill from another SIGKILL
        return f"{how} (the OOM killer, most likely: MemoryMax={_size(memory_max)})"
    reasons = {
        # no main status: a control command (ExecStartPre=, ExecStop=, ...) failed
        "exit-code": how or "a command of the unit (ExecStartPre=, ExecStartPost=, ...) "
                            "exited with an error",
        "signal": how,
        "core-dump": f"{how} (core dumped)",
        "timeout": "timed out (TimeoutStartSec=/TimeoutStopSec=)",
        "watchdog": "watchdog timeout (WatchdogSec=)",
        "start-limit-hit": "restarted too often: start limit hit "
                           "(StartLimitBurst=/StartLimitIntervalSec=)",
        "resources": "systemd could not set up the unit (see journalctl -u)",
        "protocol": "did not behave as its Type= says",
        "exec-condition": "ExecCondition= failed",
    }
    return reasons.get(result) or f"{result}{', ' + how if how else ''}"


def _size(value: str) -> str:
    """systemctl's MemoryMax= (bytes) as the unit file writes it: ``64M``."""
    number = _int(value)
    return format_size(number) if number > 0 else value


def _load_error(value: str) -> str:
    """``org.freedesktop.systemd1.BadUnitSetting "Unit x has a bad setting."`` -> the text."""
    if not value or value.startswith("(null)"):
        return ""
    _, _, text = value.partition(" ")
    return text.strip().strip('"')


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _create_time(pid: int) -> float:
    if pid <= 0:
        return 0.0
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
