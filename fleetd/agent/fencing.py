"""Fencing: when a unit with ``FenceAfterSec=`` is due to be stopped because this agent
has heard nothing from fleetd for that long. Pure timer logic; the supervisor stops.

Why: a host cut off from fleetd is declared lost after its TTL and its units start
elsewhere. Most programs are better left running meanwhile (the cut-off copy may still
serve, and a partition usually heals), so by default nothing happens on the host. For a
program where two copies are worse than none (a leader, a writer to shared storage) the
unit sets ``FenceAfterSec=``: once the agent has gone that long without a word from
fleetd it stops the unit, and fleetd starts the new copy elsewhere only after that time
(plus the stop) has surely passed. Only the agent can do this half: a cut-off host
cannot be told anything.

"A word from fleetd" is any message from the leading fleetd: a client that said hello
as fleetd with the highest epoch the agent has seen (fleetd.agent.daemon). A deposed
fleetd's word does not count: the new leader, if it cannot reach this host, starts the
unit elsewhere on this same clock. fleetd pings every heartbeat so that silence means a
cut, not a quiet desired set. The clock is
monotonic and starts when the agent starts: a restarted agent counts from its own start
(the last contact is not persisted).

A fenced unit stays stopped - Restart= does not bring it back - until fleetd sends a
desired set again; that set, not the agent's old copy of it, says whether the unit
still belongs here.

The pure part - ``fence_after``, ``reason``, ``plan`` - decides; ``Fencer`` is the timer
that asks it while any unit fences, and has the supervisor stop what is due.
"""

from __future__ import annotations

import asyncio
import time
from typing import (
    Any,
    Callable,
    Coroutine,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Tuple,
)

from fleetd import protocol
from fleetd.agent.managed import Managed
from fleetd.agent.restart import format_seconds
from fleetd.wire.unitspec import UnitConfig

CHECK_S = 0.5  # the longest the supervisor sleeps between two looks
EPSILON_S = 0.01  # past a deadline, not on it: "silent longer than FenceAfterSec="
FENCEABLE = (protocol.STARTING, protocol.RUNNING)  # what fencing stops


def fence_after(config: Mapping[str, Any]) -> Optional[float]:
    """A unit's FenceAfterSec= in seconds, or None if it never fences."""
    value = config.get("fence_after_s")
    if value is None or isinstance(value, bool):
        return None
    try:
        limit = float(value)
    except (TypeError, ValueError):
        return None
    return limit if limit > 0 and limit != float("inf") else None


def reason(silent_s: float, limit_s: float) -> str:
    """The error a fenced unit is reported with (and the agent logs)."""
    return (f"{protocol.FENCED} no word from fleetd for {silent_s:.1f}s "
            f"(FenceAfterSec={format_seconds(limit_s)})")


def plan(limits: Mapping[str, float], last_heard: float, now: float,
         most: Optional[float] = None) -> Tuple[List[Tuple[str, str]], float]:
    """``limits``: the FenceAfterSec= of each unit that runs (or is starting) and is not
    fenced yet; ``last_heard``/``now`` on the monotonic clock.

    Returns the units to fence now, each with its reason (sorted by name), and how long
    to sleep before looking again: until the earliest deadline still ahead, at most
    ``most`` (default CHECK_S: units start, and fleetd is heard, while the caller
    sleeps)."""
    silent = max(now - last_heard, 0.0)
    due = [(name, reason(silent, limit)) for name, limit in sorted(limits.items())
           if silent > limit]
    wait = CHECK_S if most is None else most
    for limit in limits.values():
        if silent <= limit:
            wait = min(wait, limit - silent + EPSILON_S)
    return due, wait


class FencePort(Protocol):
    """What the fencing timer may ask of the supervisor."""

    def all_units(self) -> Iterable[Managed]:
        """Every unit the supervisor keeps."""

    def desired_configs(self) -> Iterable[UnitConfig]:
        """The config of every spec in fleetd's desired set."""

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task the agent keeps."""

    async def fence(self, m: Managed) -> None:
        """Stop ``m`` (under its lock) if it is still fenced and still runs."""


class Fencer:
    """The timer: when fleetd was last heard (monotonic, from agent start, never
    persisted), and the units stopped for its silence, with why, until fleetd's next
    desired set (``fenced``: nothing starts them meanwhile, not even Restart=)."""

    def __init__(self, port: FencePort, check_s: float = CHECK_S) -> None:
        self.port = port
        self.check_s = check_s
        self.last_heard = time.monotonic()
        self.fenced: Dict[str, str] = {}
        self._task: Optional[asyncio.Task[None]] = None

    def heard(self) -> None:
        """The leading fleetd said something (see the module's docstring)."""
        self.last_heard = time.monotonic()

    def ensure(self, done: Callable[[asyncio.Task[None]], None]) -> None:
        """Run the timer while any unit here has FenceAfterSec= (``done``: its callback)."""
        if (self._task is None or self._task.done()) and self._fences_any():
            self._task = asyncio.ensure_future(self._run())
            self._task.add_done_callback(done)

    def _fences_any(self) -> bool:
        configs = list(self.port.desired_configs())
        configs += [m.config for m in self.port.all_units()]
        return any(fence_after(c) is not None for c in configs)

    async def _run(self) -> None:
        """Look at every unit with FenceAfterSec= when the next one falls due (at least
        every CHECK_S); fence the ones fleetd has been silent on for too long."""
        while self._fences_any():
            limits: Dict[str, float] = {}
            units = {m.name: m for m in self.port.all_units()}
            for m in units.values():
                limit = fence_after(m.config)
                if limit is not None and m.state in FENCEABLE and m.name not in self.fenced:
                    limits[m.name] = limit
            due, wait = plan(limits, self.last_heard, time.monotonic(), self.check_s)
            for name, why in due:
                self.fenced[name] = why  # from now on nothing starts it: not even Restart=
                self.port.spawn(self.port.fence(units[name]))
            await asyncio.sleep(wait)
