"""Which units of a host's desired set can travel to its agent, and when a set is worth
sending: pure helpers of the session (fleetd.daemon.session).

A unit whose spec alone is larger than a message (a huge Environment=) is left out of
the set and reported failed on the machine with why: sent, it would end the session at
every connect and keep every other unit of the machine from being delivered."""

from __future__ import annotations

import time
from typing import FrozenSet, Optional, Sequence, Tuple

from fleetd import protocol
from fleetd.registry.base import ObservedRecord
from fleetd.wire.unitspec import UnitSpec

# the largest unit spec a desired set carries: alone in a message, with room to spare
SPEC_MAX = protocol.MAX_LINE - 4096

Fingerprint = FrozenSet[Tuple[str, str, str, int]]


def fingerprint(specs: Sequence[UnitSpec]) -> Fingerprint:
    """What makes two sets the same to the agent: each spec's rendered content (its
    hash), what is wanted of it and its restart generation. Comparing those is enough,
    and cheap on every engine pass."""
    return frozenset((u["name"], u["hash"], u["want"], u.get("generation", 0))
                     for u in specs)


def refusal(spec: UnitSpec, machine: str) -> Optional[ObservedRecord]:
    """None if ``spec`` fits in a message (protocol.MAX_LINE); else its report on
    ``machine``: failed, with why. The engine then treats it as any unit that failed
    there, and the session keeps the report over the agent's snapshots (the agent never
    hears of the unit)."""
    size = protocol.item_size(spec)
    if size <= SPEC_MAX:
        return None
    why = (f"not deliverable to machine {machine}: its rendered spec is {size} "
           f"bytes, over the {SPEC_MAX}-byte limit of a message to the agent "
           "(Environment= or the command lines are too large)")
    return ObservedRecord(
        unit=str(spec["name"]), machine=machine, hash=str(spec["hash"]),
        state=protocol.FAILED, pid=None, started_at=None, exit_status=None,
        restarts=0, error=why, updated_at=time.time(),
        generation=int(spec.get("generation", 0)))
