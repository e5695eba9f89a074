"""A lab host as the lab's modules know it (its name, network namespace, address and
directory), the lab's error, and how the lab runs its tools (ip, ssh-keygen).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time

from fleetd.cgroups import CgroupError, detect

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


def remove_agent_cgroups(state_dir: str) -> None:
    """Remove the cgroups the agent of ``state_dir`` made (``fleet/<machine-id>`` in every
    hierarchy, and ``fleet`` once empty), killing what is left in them first. A plain lab
    host shares the machine's kernel: its agent's cgroups outlive its namespace unless
    someone removes them, and the lab leaves the machine as it found it."""
    try:
        with open(os.path.join(state_dir, "machine-id")) as f:
            machine_id = f.read().strip()
    except FileNotFoundError:
        return  # no agent ever ran there
    if not machine_id:
        return
    backend = detect(parent=f"fleet/{machine_id}")
    for name in backend.units():
        cg = backend.unit(name)
        cg.kill(signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not cg.empty() and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(CgroupError):
            cg.remove()
    with contextlib.suppress(CgroupError):
        backend.remove()
