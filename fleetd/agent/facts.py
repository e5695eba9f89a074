"""What the agent tells fleetd about its host, so that fleetd can schedule and render."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any, Dict, Optional

import psutil

from fleetd import __version__
from fleetd.drivers import java


def gather(machine_id: str, cgroups: Optional[Dict[str, Any]] = None,
           systemd: bool = False) -> Dict[str, Any]:
    """Facts for scheduling and rendering; ``capabilities`` are what units may require
    ("systemd", "java", "java:17", ...). ``cgroups`` is the agent's cgroup backend's
    facts (version, enforceable ``limits``, ...), so that fleetd can place units with
    MemoryMax= and friends only where they are enforced.

    ``systemd`` means Driver=systemd units can run here: PID 1 is systemd *and* the agent
    can install units and reach it (SystemdDriver.available), not only the former. The
    supervisor decides that once, when it starts, and the fact must say what it decided:
    a host that advertised "systemd" to a supervisor without the driver would take units
    only to fail them."""
    javas = java.installed_javas()
    return {
        "machine_id": machine_id,
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count() or 1,
        "memory_bytes": int(psutil.virtual_memory().total),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "agent_version": __version__,
        "systemd": systemd,
        "cgroups": cgroups if cgroups is not None else {"version": "unknown", "limits": []},
        "java": [j.to_fact() for j in javas],
        "capabilities": sorted({*(["systemd"] if systemd else []),
                                *java.machine_capabilities(javas)}),
    }
