"""What the agent tells fleetd about its host, so that fleetd can schedule and render."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any, Dict

import psutil

from fleetd import __version__
from fleetd.drivers import java


def _pid1() -> str:
    try:
        with open("/proc/1/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def gather(machine_id: str) -> Dict[str, Any]:
    """Facts for scheduling and rendering; ``capabilities`` are what units may require
    ("systemd", "java", "java:17", ...)."""
    javas = java.installed_javas()
    systemd = _pid1() == "systemd"
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
        "java": [j.to_fact() for j in javas],
        "capabilities": sorted({*(["systemd"] if systemd else []),
                                *java.machine_capabilities(javas)}),
    }
