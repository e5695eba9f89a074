"""The one small interface behind which a unit's program is run, and the ports a runner
is given instead of the whole supervisor.

The supervisor (fleetd.agent.supervisor) decides *what* happens to a unit - the desired
set, the per-unit locks, converge, recovery; a ``Runner`` does it for the units of its
kind of driver, picked by the driver's declared capabilities:

  ProcessUnits  (fleetd.agent.process_units)  drivers that fork the program themselves
                (exec, java): control commands, exits, Restart=, cgroups, checks;
  SystemdUnits  (fleetd.agent.systemd_units)  drivers whose host service manager
                supervises (systemd): start, stop and poll, nothing more.

A runner never imports the supervisor. What it may ask of it is a ``Port``: report a
unit, keep or drop its record, spawn a task, converge a unit again - and, for the
process runner, the unit's lock and whether fleetd still wants it (``ProcessPort``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Coroutine, Dict, Iterable, Optional, Protocol, Set

from fleetd import protocol
from fleetd.agent.managed import Managed
from fleetd.drivers.base import Driver, Handle, StartContext

log = logging.getLogger("fleet-agent")

EMPTY_POLL_S = 0.01  # how often a condition (a cgroup emptied) is looked at while waiting


class Port(Protocol):
    """What every runner may ask of the supervisor."""

    def report(self, m: Managed) -> None:
        """Send the unit's status to every attached fleetd."""

    def save(self, m: Managed) -> None:
        """Keep the record a restarted agent re-adopts the program by."""

    def delete_record(self, name: str) -> None:
        """The unit runs nothing a restarted agent could adopt."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the agent keeps (its errors are logged)."""

    def converge_later(self, name: str) -> None:
        """Ask the supervisor to converge ``name`` again (under its lock, later)."""

    def context(self, m: Managed) -> StartContext:
        """A fresh start context (a new invocation id) for a program of ``m``."""

    def all_units(self) -> Iterable[Managed]:
        """Every unit the supervisor keeps."""


class ProcessPort(Port, Protocol):
    """What the process runner also needs: it acts on a unit outside converge (an exit,
    a delayed restart), so it takes the unit's lock and checks the unit is still wanted."""

    def lock(self, name: str) -> asyncio.Lock:
        """The unit's lock: whatever changes a unit holds it."""

    def current(self, name: str) -> Optional[Managed]:
        """The unit the supervisor keeps under ``name`` now (None: forgotten)."""

    def wanted(self, m: Managed) -> bool:
        """Is ``m`` still the spec fleetd wants running, and not fenced?"""

    async def start(self, m: Managed, automatic: bool = False) -> None:
        """Start ``m`` through whichever runner its driver has (under its lock)."""


class Runner(Protocol):
    """How the units of one kind of driver are run. Every method but ``recovered`` is
    called under the unit's lock; ``driver`` is the unit's (None: not on this host)."""

    async def start(self, m: Managed, driver: Driver, automatic: bool = False) -> None:
        """Start the unit's program; ``automatic``: a restart by Restart=."""

    async def stop(self, m: Managed, driver: Optional[Driver]) -> None:
        """Stop it and report ``stopped``."""

    async def forget(self, m: Managed, driver: Optional[Driver]) -> None:
        """Leave nothing of it on the host (it was stopped, or never ran)."""

    def adopt(self, m: Managed, driver: Driver, handle: Handle) -> bool:
        """Take over a program a previous agent started (``handle``, recovered by the
        driver). True if it runs in a cgroup of ours (which is then not swept)."""

    def end_run(self, m: Managed, driver: Driver, outcome: str, why: str) -> bool:
        """End the running program for a reason of the agent's own; False if the runner
        does not (no program runs, or its service manager's)."""

    def recovered(self, records: Dict[str, Any], desired: Set[str],
                  adopted: Set[str]) -> None:
        """After ``adopt`` was called for every record: clean up what no record explains."""


def finish(port: Port, m: Managed, state: str, why: Optional[str]) -> None:
    """The unit settles in ``state`` (failed: with ``why``): reported."""
    m.state, m.error = state, why
    if why and state == protocol.FAILED:
        log.warning("%s: failed: %s", m.name, why)
    port.report(m)


async def wait_event(event: asyncio.Event, timeout: Optional[float]) -> bool:
    """Wait for ``event`` at most ``timeout`` (None: no limit); True if it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False


async def until(predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (None: no limit) has passed."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    while not predicate():
        if deadline is not None and loop.time() >= deadline:
            return False
        await asyncio.sleep(EMPTY_POLL_S)
    return True
