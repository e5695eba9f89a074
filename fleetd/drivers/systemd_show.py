"""What ``systemctl show`` prints, read as fleetd's view of a unit: pure functions.

``parse_show`` splits the output for several units into one KEY=VALUE map each;
``service_status`` maps one unit's properties (those in ``PROPERTIES``) to a
ServiceStatus: fleetd's state (fleetd.protocol) for systemd's ActiveState/SubState/Result,
the main pid, systemd's restart count, the exit status, and why it failed in words a
user can act on. Nothing here runs a process (fleetd.drivers.systemctl does), so every
case is a table test (tests/unit/test_systemd_text.py). Standard library only.
"""

from __future__ import annotations

import signal as signals
from typing import Dict, List, Optional

from fleetd.cgroups.limits import format_size
from fleetd.drivers.base import ServiceStatus

# systemd's own counters of a unit's cgroup -> fleetd's usage fields (cgroups/base.py
# UnitCgroup.stats), read in the same call; CPUUsageNSec is in ns, fleetd counts us
USAGE = {"MemoryCurrent": "memory_bytes", "CPUUsageNSec": "cpu_usage_usec",
         "TasksCurrent": "tasks"}
UNSET = 2**64 - 1  # what systemctl shows for a counter it does not keep ("[not set]" too)
# what a status reads, in one `systemctl show` call per poll
PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "MainPID", "NRestarts",
              "ExecMainStatus", "ExecMainCode", "Result", "MemoryMax", "LoadError",
              "NeedDaemonReload", *USAGE)
EXIT_EXEC = 203  # systemd's exit status when it cannot execute the command
# waitid's si_code, as systemctl show prints ExecMainCode
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3

# fleetd's states (fleetd.protocol) for systemd's ActiveState; inactive and failed need
# the Result and are decided in _state()
_ACTIVE = {"active": "running", "reloading": "running", "activating": "starting",
           "deactivating": "stopping", "maintenance": "stopping", "refreshing": "running"}


def parse_show(text: str) -> List[Dict[str, str]]:
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


def service_status(props: Dict[str, str]) -> ServiceStatus:
    """One unit's ``systemctl show`` properties as fleetd sees the unit."""
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
        "usage": usage(props),
    }


def usage(props: Dict[str, str]) -> Dict[str, int]:
    """The counters systemd keeps of the unit's cgroup, as fleetd names them; those it
    does not keep (accounting off, the unit not running) are left out."""
    found = {}
    for prop, field in USAGE.items():
        value = props.get(prop, "")
        if value.isdigit() and int(value) != UNSET:
            found[field] = int(value) // 1000 if prop == "CPUUsageNSec" else int(value)
    return found


def _int(value: Optional[str]) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


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
