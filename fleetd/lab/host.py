"""A lab host as the lab's modules know it (its name, network namespace, address and
directory), the lab's error, and how the lab runs its tools (ip, ssh-keygen).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess

AGENT_STATE_MOUNT = "/var/lib/fleet-agent"  # the agent's default; each host mounts its own


class LabError(Exception):
    """Something the user has to fix before the lab can run; the message says what."""


@dataclasses.dataclass(frozen=True)
class Host:
    name: str  # h1, h2, ...
    netns: str
    address: str
    dir: str
    systemd: bool = False  # a booted rootfs of its own, with systemd as PID 1
    without_psutil: bool = False  # a systemd host whose python3 has no psutil

    @property
    def state_dir(self) -> str:
        return os.path.join(self.dir, "agent")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc
