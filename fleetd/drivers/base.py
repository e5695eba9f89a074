"""The driver protocol: how the agent starts, signals and re-adopts one unit's program.

Modelled on Nomad's driver plugins, with one rule Nomad's exec driver lacks: a driver
must be able to *recover* a task it did not start in this process, from the record it
wrote when it started it, so that a restarted agent adopts running programs instead of
starting duplicates. Identity is never the pid alone: pid + the exact start tick of
the process + membership of the unit's cgroup (+ the invocation id the driver put in the
program's environment, where it can still be read), because pids are reused.

Stopping is generic (signal, wait, escalate) and lives in the supervisor; drivers only
deliver signals to every process of the unit. Drivers that run processes themselves
(exec, and java through it) are ``ProcessDriver``s: they also run a unit's control
commands (ExecStartPre=, ExecStartPost=, ExecStop=) in the same environment and cgroup.
What a driver can do is declared, not probed: each has ``capabilities``
(``Capabilities``, as Nomad's drivers answer ``Capabilities()``). A driver whose host
service manager supervises for it (systemd) says ``supervises_itself`` and is polled
instead; the agent picks the runner for a unit by it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, TypedDict

from fleetd.wire.unitspec import Command, UnitConfig


class DriverError(Exception):
    """A unit could not be started; the message says why, for the user."""


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a driver does, declared (Nomad: ``DriverPlugin.Capabilities()``).

    ``supervises_itself``: the host's service manager forks, restarts, limits and reaps
    the unit (systemd); the agent starts, stops and polls it, nothing more.
    ``control_commands``: the driver forks the unit's processes itself, into its cgroup,
    and runs its ExecStartPre=/ExecStartPost=/ExecStop= (a ``ProcessDriver``)."""

    supervises_itself: bool = False
    control_commands: bool = False


PROCESS = Capabilities(control_commands=True)
HOST_SUPERVISED = Capabilities(supervises_itself=True)


@dataclasses.dataclass(frozen=True)
class StartContext:
    """Host-side facts a driver needs to start a unit."""

    unit: str
    machine_id: str
    log_path: str
    invocation_id: str
    # the cgroup below the unit's that this run's processes join ("": the unit's own);
    # the process runner sets it for units that keep a prepared process (Spare)
    leaf: str = ""


class HandleRecord(TypedDict):
    """A ``Handle`` as a unit's record on disk keeps it (``Handle.to_record``). Read
    back, a record is untrusted: ``Driver.recover`` takes a plain dict and proves it."""

    driver: str
    pid: int
    create_time: float
    started_at: float
    invocation_id: str
    start_ticks: int
    unit: str
    leaf: str


@dataclasses.dataclass(frozen=True)
class Handle:
    """A running program, as much as is needed to find it again after a restart."""

    driver: str
    pid: int
    create_time: float  # psutil's start time of ``pid`` (seconds; for display)
    started_at: float  # wall clock, for users
    invocation_id: str
    start_ticks: int = -1  # the kernel's start time of ``pid`` in clock ticks: the reuse guard
    unit: str = ""  # the unit (and so its cgroup); "" in records of older agents
    leaf: str = ""  # the cgroup below the unit's that the program runs in ("": none)

    def to_record(self) -> HandleRecord:
        return {"driver": self.driver, "pid": self.pid, "create_time": self.create_time,
                "started_at": self.started_at, "invocation_id": self.invocation_id,
                "start_ticks": self.start_ticks, "unit": self.unit, "leaf": self.leaf}

    @classmethod
    def from_record(cls, record: Dict[str, Any]) -> Handle:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in fields})


def _stat(pid: int) -> Optional[List[bytes]]:
    """/proc/PID/stat from field 3 (the state) on; None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    return data[data.rfind(b")") + 2:].split()


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.

    Exact, unlike a float of seconds: two processes that share a pid and a start tick
    would need the pid to be freed and reused within one tick (10 ms). -1 if gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else -1


def alive(pid: int, ticks: int) -> bool:
    """Does the process that started at ``ticks`` (-1: whichever has the pid) still run?
    A zombie does not: it has ended, and only waits for its parent to reap it."""
    fields = _stat(pid)
    return fields is not None and fields[0] != b"Z" and (ticks < 0 or int(fields[19]) == ticks)


class Driver(Protocol):
    name: str
    capabilities: Capabilities

    def start(self, config: UnitConfig, ctx: StartContext, command_index: int = 0) -> Handle:
        """Start the program (command ``command_index`` of the unit); raise DriverError."""

    def signal(self, handle: Handle, signum: int) -> None:
        """Deliver ``signum`` to every process of the unit (no error if gone)."""

    def recover(self, record: Dict[str, Any]) -> Optional[Handle]:
        """The handle for a program this driver started earlier, if it still runs and is
        provably the same program; None otherwise."""


class Spare(Protocol):
    """A process prepared for a unit's next run (fleetd.drivers.spare): already in the
    unit's cgroups (cgroup ``leaf`` below the unit's), it has run nothing of the unit and
    waits to become its program. Never the unit's main process until ``take`` made it so."""

    pid: int
    leaf: str

    def discard(self) -> None:
        """Kill and reap it (nothing if it became a program); idempotent."""


class ProcessDriver(Driver, Protocol):
    """A driver that forks the unit's processes itself, into the unit's cgroup."""

    def can_prepare(self, config: UnitConfig) -> bool:
        """Could this unit's program be started from a ``Spare`` on this host?"""

    def prepare(self, config: UnitConfig, ctx: StartContext) -> Spare:
        """A spare for the unit's next run, in cgroup ``ctx.leaf`` below the unit's
        (made now, with the unit's limits). Blocks while it joins the cgroups (a cgroup
        migration: ~13 ms here), so the agent calls it in a worker thread, long before
        the spare is needed. Raises DriverError."""

    def take(self, spare: Spare, config: UnitConfig, ctx: StartContext,
             command_index: int = 0) -> Handle:
        """Start the unit's program in ``spare`` (``ctx.leaf`` is the spare's): as
        ``start``, minus the fork and the cgroup migration. DriverError if the spare
        cannot (it is then discarded, and ``start`` may be tried)."""

    def run(self, config: UnitConfig, ctx: StartContext, command: Command,
            extra_env: Optional[Dict[str, str]] = None) -> Handle:
        """Start one control command (ExecStartPre=/Post=/Stop=) of the unit, in its
        environment (plus ``extra_env``, like MAINPID), cgroup and log; raise
        DriverError. The supervisor waits for it."""

    def as_unit(self, config: UnitConfig, ctx: StartContext
                ) -> Tuple[Dict[str, str], Callable[[], None]]:
        """The environment and the preexec (cgroup, limits, User=) a program of the
        unit gets: an exec health check runs with them. Raise DriverError."""


class _ServiceStatusBase(TypedDict):
    state: str  # a protocol unit state (starting, running, ..., failed)
    pid: Optional[int]  # the main process, None if none runs
    restarts: int  # the service manager's own count (systemd: NRestarts)
    exit_status: Optional[int]  # of the main process; -N: killed by signal N
    error: Optional[str]  # why it failed, in the manager's words
    known: bool  # the manager has the unit loaded
    active_state: str  # the manager's own words (systemd: ActiveState)


class ServiceStatus(_ServiceStatusBase, total=False):
    """One unit as a host service manager reports it (``SupervisingDriver.status``)."""

    sub_state: str
    result: str
    load_state: str
    load_error: str
    need_reload: bool
    usage: Dict[str, int]  # the manager's counters of the unit's cgroup (memory_bytes, ...)


class SupervisingDriver(Driver, Protocol):
    """A driver whose host service manager supervises the unit (``supervises_itself``):
    the agent asks it instead of watching a pid."""

    def status(self, name: str) -> ServiceStatus:
        """One unit's status."""

    def statuses(self, names: Sequence[str]) -> Dict[str, ServiceStatus]:
        """The status of each of ``names``, in one question to the service manager."""

    def stop(self, name: str, timeout: Optional[float] = None) -> ServiceStatus:
        """Stop the unit and wait (``timeout``: its TimeoutStopSec=); its status after."""

    def forget(self, name: str, timeout: Optional[float] = None) -> None:
        """Stop it if it runs and leave nothing of it installed."""

    def installed(self) -> List[str]:
        """Every unit this driver installed and has not forgotten."""
