"""Asking the host's systemd through the ``systemctl`` command.

Everything goes through systemctl rather than D-Bus: the agent side is stdlib + psutil
only, and systemctl is on every systemd host, old ones included. Every call puts ``--``
before unit names (a name is never read as an option), runs with no pager, no colours and
the C locale, and has a timeout: calls that do not wait on a unit get
SYSTEMCTL_TIMEOUT_S, ``start``/``stop`` the unit's own timeout plus STOP_GRACE_S (None:
no bound). A failure is a DriverError with systemd's reason; the statuses ``show``
returns are read by fleetd.drivers.systemd_show.

Names given here have passed fleetd.drivers.systemd_files.check_name.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from typing import Dict, Optional, Sequence

from fleetd.drivers.base import DriverError, ServiceStatus
from fleetd.drivers.systemd_show import EXIT_EXEC, PROPERTIES, parse_show, service_status

SYSTEMCTL_TIMEOUT_S = 30.0  # for calls that do not wait on a unit (show, daemon-reload)
STOP_GRACE_S = 15.0  # beyond the unit's own timeout: systemd kills, then reports


class Systemctl:
    """systemctl's commands as the systemd driver uses them."""

    def __init__(self, command: str = "systemctl") -> None:
        self.command = command

    def reachable(self) -> bool:
        """Does systemctl answer (``show -p Version``)?"""
        try:
            out = self.run("show", "-p", "Version")
        except DriverError:
            return False
        return out.returncode == 0 and out.stdout.startswith("Version=")

    def reload(self) -> None:
        out = self.run("daemon-reload")
        if out.returncode != 0:
            raise DriverError(f"systemctl daemon-reload: {_first_line(out.stderr)}")

    def reset_failed(self, name: str) -> None:
        """Forget a failed state (and a start limit hit); its answer does not matter."""
        self.run("reset-failed", "--", name)

    def start(self, name: str, no_block: bool, timeout: Optional[float]) -> None:
        """``systemctl start``: waits for the start job unless ``no_block``; ``timeout``
        is the unit's TimeoutStartSec= (None: none). A failure says why (``why``)."""
        argv = ["start", "--", name]
        if no_block:
            argv.insert(1, "--no-block")
        out = self.run(*argv, timeout=_bound(timeout))
        if out.returncode != 0:
            raise DriverError(self.why(name, out.stderr))

    def stop(self, name: str, timeout: Optional[float]) -> None:
        """``systemctl stop`` and wait (``timeout``: the unit's TimeoutStopSec=, None:
        none); a unit systemd does not have loaded is already stopped."""
        out = self.run("stop", "--", name, timeout=_bound(timeout))
        if out.returncode != 0 and "not loaded" not in out.stderr:
            raise DriverError(f"systemctl stop {name}: {_first_line(out.stderr)}")

    def kill(self, name: str, signum: int) -> None:
        """Signal every process of the unit (systemd knows its cgroup)."""
        self.run("kill", f"--signal={int(signum)}", "--", name)

    def statuses(self, names: Sequence[str]) -> Dict[str, ServiceStatus]:
        """Every named unit's status from one ``systemctl show`` call."""
        if not names:
            return {}
        out = self.run("show", "-p", ",".join(PROPERTIES), "--", *names)
        if out.returncode != 0:
            raise DriverError(f"systemctl show: {_first_line(out.stderr)}")
        blocks = parse_show(out.stdout)
        if len(blocks) != len(names):
            raise DriverError(f"systemctl show: {len(blocks)} answers for {len(names)} units")
        return {name: service_status(props) for name, props in zip(names, blocks)}

    def why(self, name: str, stderr: str) -> str:
        """systemd's reason a start failed: the unit's result, its exit, a bad unit file,
        and the last lines it logged."""
        parts = [f"systemctl start {name}: {_first_line(stderr) or 'failed'}"]
        with contextlib.suppress(DriverError):
            st = self.statuses([name])[name]
            if st["load_error"]:
                parts.append(st["load_error"])
            if st["error"]:
                parts.append(st["error"])
            if st.get("exit_status") == EXIT_EXEC:  # without waiting on the journal
                shown = self.run("show", "-p", "ExecStart", "--value", "--", name).stdout
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

    def run(self, *args: str, timeout: Optional[float] = SYSTEMCTL_TIMEOUT_S
            ) -> subprocess.CompletedProcess[str]:
        """One systemctl call; DriverError if there is no systemctl or no answer."""
        env = dict(os.environ, SYSTEMD_PAGER="", SYSTEMD_COLORS="0", LC_ALL="C")
        try:
            return subprocess.run([self.command, *args], capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, env=env)
        except FileNotFoundError:
            raise DriverError(f"{self.command} not found: is this a systemd host?") from None
        except subprocess.TimeoutExpired:
            raise DriverError(f"systemctl {' '.join(args)}: no answer within "
                              f"{timeout:.0f}s") from None


def _bound(timeout: Optional[float]) -> Optional[float]:
    """How long to wait on a job whose unit has this timeout."""
    return None if timeout is None else float(timeout) + STOP_GRACE_S


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
