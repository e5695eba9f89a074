"""What a driver may ask of a cgroup backend, whatever the host's cgroups look like.

Hosts differ: cgroup v1 (a hierarchy per controller), v2 (one tree), "hybrid" (v1
controllers plus a v2 tree for membership, systemd's old default), or nothing usable (not
root, a container without cgroupfs). Drivers must not care, so they see two small
protocols: a ``Backend`` per host, and a ``UnitCgroup`` per unit. The unit's cgroup is
what lets the agent limit a program, find *every* process it made (including ones that
double-forked and left its process group), kill them all, and re-adopt them after an
agent restart.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Protocol

from fleetd.cgroups.limits import Limits


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file and the kernel's reason, so
    that the agent can log it or report it to the user as is."""


class LimitsUnsupported(CgroupError):
    """The unit asks for limits this host cannot enforce.

    Raised rather than running the program unlimited: a MemoryMax= that silently does
    nothing is worse than a unit that fails to start with a clear reason (and the
    scheduler can avoid such hosts: ``Backend.facts()["limits"]`` lists what is
    enforceable)."""


class UnitCgroup(Protocol):
    """One unit's cgroup (on a hybrid or v1 host: its directory in every hierarchy).

    Cheap to construct (paths only); nothing touches the kernel before ``create``. Every
    method but ``create`` and ``preexec`` tolerates a cgroup that does not exist (yet, or
    any more): it is then empty."""

    name: str

    def create(self, limits: Limits) -> None:
        """Make the cgroup and apply ``limits`` (unset ones are reset to "no limit", so a
        changed unit can be re-created in place). Idempotent. Raises LimitsUnsupported
        for a limit the host cannot enforce, CgroupError for any other failure."""

    def preexec(self) -> Callable[[], None]:
        """A function for ``subprocess.Popen(preexec_fn=...)``: it moves the forked child
        into the cgroup before exec, so the program never runs outside it (no race with
        its first fork). It only opens, writes and closes files whose names were computed
        beforehand; if it fails, Popen raises SubprocessError and nothing runs."""

    def leaf(self, name: str) -> Optional[UnitCgroup]:
        """The cgroup ``name`` below this one (cheap, nothing made yet), or None where
        this host's backend cannot place a unit's processes below its cgroup. A run of a
        unit lives in one so that a prepared process for its next run can wait in a
        sibling, untouched when this run's processes are killed."""

    def pids(self) -> List[int]:
        """Every live process in the cgroup (zombies are not listed), sorted."""

    def contains(self, pid: int) -> bool:
        """Is ``pid`` in this cgroup? Evidence (with pid + start time) that a program
        found after an agent restart is the one this unit started."""

    def kill(self, signum: int) -> int:
        """Send ``signum`` to every process in the cgroup, including daemonised ones,
        without racing forks (the kernel's cgroup.kill or a freezer where available).
        Like systemd, a terminating signal is followed by SIGCONT, so that a stopped
        process can act on it. Does not wait for deaths: poll ``empty()``. Returns how
        many processes were signalled."""

    def empty(self) -> bool:
        """True when no live process is left (zombies awaiting their reaper count as
        gone: the kernel already removed them from the cgroup)."""

    def remove(self) -> None:
        """Remove the cgroup from every hierarchy; a cgroup already gone is fine. Raises
        CgroupError if processes remain (kill them and wait for ``empty()`` first)."""

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in this cgroup, so the
        supervisor can say "killed by the kernel: out of memory (MemoryMax=64M)"."""

    def stats(self) -> Dict[str, int]:
        """Usage counters, where the host keeps them: memory_bytes, memory_peak_bytes,
        cpu_usage_usec, cpu_throttled_periods, cpu_throttled_usec, tasks."""


class Backend(Protocol):
    """A host's cgroups, below one parent cgroup that this agent owns."""

    version: str  # "v1", "v2", "hybrid" or "none"
    parent: str  # like "fleet/<machine-id>"; every unit's cgroup is below it

    def unit(self, name: str, pgid: Optional[int] = None) -> UnitCgroup:
        """The cgroup of unit ``name`` (not created yet). ``pgid`` is the process group
        the unit's program leads (the exec driver's program pid, as it starts a new
        session); only the no-cgroups backend uses it, to find and signal the program."""

    def units(self) -> List[str]:
        """Names of the unit cgroups that exist below the parent: after an agent restart,
        the ones no longer desired are leftovers to kill and remove."""

    def facts(self) -> Dict[str, Any]:
        """For the machine's facts and the scheduler: version, which enforceable limits
        (``limits``: Limits field names), where each controller lives, and for the none
        backend the reason."""

    def remove(self) -> None:
        """Remove the (empty) parent cgroups this agent made; ones still holding unit
        cgroups, or shared with another agent, are left alone."""
