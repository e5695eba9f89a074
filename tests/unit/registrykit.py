"""Records the registry tests build: units, machines and observed rows, the same for the
contract tests (every registry) and the SQLite file's own tests."""

from __future__ import annotations

from fleetd.registry.base import MachineRecord, ObservedRecord, UnitInput
from fleetd.units.model import content_hash

A_TEXT = "[Service]\nExecStart=/bin/a\n"
B_TEXT = "[Service]\nExecStart=/bin/b\n"
C_TEXT = "[Service]\nExecStart=/bin/c\n"


def u(name: str, text: str) -> UnitInput:
    return UnitInput(name, text, content_hash(text))


def machine(name: str, address: str = "10.0.0.1", port: int = 22) -> MachineRecord:
    return MachineRecord(name=name, address=address, port=port, user="root",
                         identity="/root/.ssh/id", known_hosts=None,
                         agent_command="fleet-agent", metadata={"rack": "r1"})


def observed(unit: str, machine: str, state: str = "running", pid: int = 100) -> ObservedRecord:
    return ObservedRecord(unit=unit, machine=machine, hash="h", state=state, pid=pid,
                          started_at=1.0, exit_status=None, restarts=0, error=None,
                          updated_at=2.0)
