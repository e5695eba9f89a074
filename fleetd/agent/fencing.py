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

"A word from fleetd" is any message from a client that said hello as fleetd; fleetd
pings every heartbeat so that silence means a cut, not a quiet desired set. The clock is
monotonic and starts when the agent starts: a restarted agent counts from its own start
(the last contact is not persisted).

A fenced unit stays stopped - Restart= does not bring it back - until fleetd sends a
desired set again; that set, not the agent's old copy of it, says whether the unit
still belongs here.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from fleetd import protocol
from fleetd.agent.restart import format_seconds

CHECK_S = 0.5  # the longest the supervisor sleeps between two looks
EPSILON_S = 0.01  # past a deadline, not on it: "silent longer than FenceAfterSec="


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
