"""Where the agent goes on a host, and which paths a purge may ever remove.

A ``Target`` is the prefix, the state directory and the service name; ``check`` refuses
paths a purge could not safely remove (``path_problem``: absolute, normal, two levels
deep, no quoting needed, no system directory). The agent command an install registers
names the target, and ``parse_agent_command`` reads it back: that is all fleetd keeps
about where it installed.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re
import shlex
from typing import List, Optional, Tuple

from fleetd.agent.state import DEFAULT_STATE_DIR
from fleetd.bootstrap.probe import HostReport
from fleetd.wire import names

DEFAULT_PREFIX = "/opt/fleetd-agent"
SERVICE = "fleet-agent.service"
UNIT_DIR = "/etc/systemd/system"
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)+")
# never removed by a purge, whatever --prefix or --state-dir said
_PROTECTED = {"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
              "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/usr/local",
              "/var", "/var/lib", "/var/log", "/var/tmp", "/var/cache", "/mnt", "/media"}


class BootstrapError(Exception):
    """The agent could not be installed (or removed); the message is for the user."""

    def __init__(self, message: str, problems: Optional[List[str]] = None,
                 report: Optional[HostReport] = None) -> None:
        super().__init__(message)
        self.problems = problems or []
        self.report = report


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the agent goes on a host."""

    prefix: str = DEFAULT_PREFIX
    state_dir: str = DEFAULT_STATE_DIR
    service: str = SERVICE

    def check(self) -> None:
        """Refuse paths a purge could not safely remove, or that need quoting."""
        for what, path in (("prefix", self.prefix), ("state directory", self.state_dir)):
            problem = path_problem(path)
            if problem:
                raise BootstrapError(f"{what} {path!r}: {problem}")
        # the one rule for a unit's name, and no \ (commands name the service unquoted)
        if not names.is_valid(self.service) or "\\" in self.service:
            raise BootstrapError(f"service {self.service!r} is not a unit name")

    @property
    def launcher(self) -> str:
        return f"{self.prefix}/current/bin/fleet-agent"

    def agent_command(self, systemd: bool) -> str:
        """What fleetd runs over SSH to reach this agent (MachineRecord.agent_command)."""
        cmd = f"{self.launcher} attach --state-dir {self.state_dir}"
        return cmd + (f" --systemd-service {self.service}" if systemd else "")

    @property
    def unit_path(self) -> str:
        return f"{UNIT_DIR}/{self.service}"


def path_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a prefix or state directory (None: it can): it must be
    absolute and normal (no ``.``, ``..``, ``//`` or trailing ``/``: what the shell
    removes is the path as written), two levels deep, of characters that need no
    quoting, and none of the system's own directories."""
    if not _SAFE_PATH.fullmatch(path) or posixpath.normpath(path) != path:
        return ("want an absolute, normal path (no . or .. or //), two levels deep at "
                "least, of letters, digits and _ . + -")
    if path in _PROTECTED:
        return "a system directory cannot be the agent's own (a purge removes it)"
    return None


def parse_agent_command(command: str) -> Optional[Tuple[Target, bool]]:
    """(target, runs as a systemd service) if ``command`` is one ``install`` made."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    suffix = "/current/bin/fleet-agent"
    if len(argv) < 2 or not argv[0].endswith(suffix) or argv[1] != "attach":
        return None
    opts = dict(zip(argv[2::2], argv[3::2]))
    if len(argv[2:]) % 2 or set(opts) - {"--state-dir", "--systemd-service"}:
        return None
    target = Target(prefix=argv[0][: -len(suffix)],
                    state_dir=opts.get("--state-dir", DEFAULT_STATE_DIR),
                    service=opts.get("--systemd-service", SERVICE))
    return target, "--systemd-service" in opts
