"""The agent's composition root: what this host offers, detected once and handed over.

The supervisor and its runners never probe the host; the agent daemon calls these and
passes the results in (tests pass fakes: fleetd.testing.driver, NoneBackend).
"""

from __future__ import annotations

from typing import Dict

from fleetd.cgroups import Backend, detect
from fleetd.drivers.base import Driver
from fleetd.drivers.exec import ExecDriver
from fleetd.drivers.java import JavaDriver
from fleetd.drivers.systemd import SystemdDriver


def cgroups(machine_id: str) -> Backend:
    """The host's cgroups. Several agents may share one kernel (lab hosts): each owns
    fleet/<machine-id>."""
    return detect(parent=f"fleet/{machine_id}")


def drivers(backend: Backend) -> Dict[str, Driver]:
    """The drivers this host can run, by name: exec (in ``backend``'s cgroups), java
    through it, and systemd where PID 1 is systemd and reachable."""
    exec_driver = ExecDriver(backend)
    found: Dict[str, Driver] = {"exec": exec_driver, "java": JavaDriver(exec_driver)}
    systemd = SystemdDriver()
    if systemd.available():
        found["systemd"] = systemd
    return found
