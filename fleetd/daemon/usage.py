"""Each unit's usage, asked of the agents when someone looks: ``/metrics``, ``status``,
``list-units --fields ...,cpu,memory``.

The agent reads its units' cgroups when asked (``usage``, a request over the session:
fleetd.agent.daemon), so a number is as fresh as the question and costs nothing between
questions. Every connected machine is asked at once, each for at most USAGE_TIMEOUT_S;
a machine that does not answer in time, or runs an agent older than the request (it
answers with an error, not a reply), is left out - its units show no usage, never a
made-up 0. What comes back is untrusted: a field that does not read is ``BadUsage``
naming it, and that machine's usage is left out (logged).

Only the leading fleetd holds sessions: a follower's answers have no usage.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, Mapping, Optional, Protocol, Tuple

from fleetd.daemon.metrics import Usage
from fleetd.transport.base import TransportError
from fleetd.wire import messages, names, numbers

log = logging.getLogger("fleetd.usage")
USAGE_TIMEOUT_S = 2.0
COUNTER_MAX = 2 ** 63 - 1

Key = Tuple[str, str]  # (unit, machine)


class BadUsage(ValueError):
    """An agent's usage reply that does not read."""


class Asks(Protocol):
    """What ``gather`` needs of a machine session (MachineSession is one)."""

    connected: bool

    async def request(self, kind: str, timeout: float = 5.0, **fields: Any
                      ) -> messages.Reply: ...


def read(reply: Mapping[str, Any], machine: str) -> Dict[Key, Usage]:
    """An agent's usage reply: unit -> its cgroup counters (memory_bytes,
    cpu_usage_usec, oom_kills; others are not used), checked."""
    if "error" in reply:
        raise BadUsage(f"machine {machine}: {str(reply['error'])[:200]}")
    found = reply.get("usage")
    if not isinstance(found, dict):
        raise BadUsage(f"machine {machine}: usage reply: usage is not an object")
    out: Dict[Key, Usage] = {}
    for unit, counters in found.items():
        why = names.problem(unit)
        if why is not None:
            raise BadUsage(f"machine {machine}: usage reply: {why}")
        if not isinstance(counters, dict):
            raise BadUsage(f"machine {machine}: usage of {unit}: not an object")
        out[(unit, machine)] = Usage(
            memory_bytes=_counter(counters, "memory_bytes", machine, unit),
            cpu_seconds=_seconds(_counter(counters, "cpu_usage_usec", machine, unit)),
            oom_kills=_counter(counters, "oom_kills", machine, unit))
    return out


def _counter(counters: Mapping[str, Any], key: str, machine: str, unit: str
             ) -> Optional[int]:
    if key not in counters:
        return None
    try:
        return numbers.json_int(counters[key], 0, COUNTER_MAX)
    except numbers.NumberError as exc:
        raise BadUsage(f"machine {machine}: usage of {unit}: {key}: {exc}") from None


def _seconds(usec: Optional[int]) -> Optional[float]:
    return None if usec is None else usec / 1e6


async def gather(sessions: Mapping[str, Asks], timeout: float = USAGE_TIMEOUT_S
                 ) -> Dict[Key, Usage]:
    """Every connected machine's units' usage, asked at once; those that do not answer
    well within ``timeout`` are left out."""
    asked = {name: s for name, s in sessions.items() if s.connected}

    async def one(name: str, session: Asks) -> Dict[Key, Usage]:
        try:
            return read(await session.request(messages.USAGE, timeout=timeout), name)
        except (TransportError, BadUsage) as exc:
            log.info("no usage from %s: %s", name, exc)
            return {}

    out: Dict[Key, Usage] = {}
    for part in await asyncio.gather(*(one(n, s) for n, s in asked.items())):
        out.update(part)
    return out
