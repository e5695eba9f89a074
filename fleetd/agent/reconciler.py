"""The host reconciler: one unit's desired spec + what the agent has -> the next task.

Pure (fleet's agent reconciler, per unit): the supervisor calls it until it answers
None, executing each task in between. Re-sending the same desired set is a no-op: a
program that exited on its own stays exited (its restart policy, not a reconnecting
fleetd, decides whether it runs again).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from fleetd import protocol
from fleetd.wire.unitspec import GENERATION, UnitSpec

START = "start"  # run the program
STOP = "stop"  # signal it and wait until it is gone
LOAD = "load"  # take the new spec (content changed or first seen) without running it
FORGET = "forget"  # drop the unit: it is not desired on this host any more
# run ExecReload= and take the new spec, the program running on (OnPeersChange=reload)
RELOAD = "reload"

ACTIVE = (protocol.STARTING, protocol.RUNNING, protocol.STOPPING)


@dataclasses.dataclass(frozen=True)
class Current:
    """What the agent has for a unit."""

    hash: str
    state: str
    generation: int = GENERATION
    base: str = ""  # the spec's base: the same while only the placements it read change


@dataclasses.dataclass(frozen=True)
class Task:
    kind: str
    reason: str


def next_task(spec: Optional[UnitSpec], cur: Optional[Current]) -> Optional[Task]:
    if spec is None:
        if cur is None:
            return None
        if cur.state in ACTIVE:
            return Task(STOP, "no longer desired on this host")
        return Task(FORGET, "no longer desired on this host")
    if cur is None:
        return Task(LOAD, "new unit")
    if cur.hash != spec["hash"]:
        if reloads(spec, cur):
            return Task(RELOAD, "only the placements it reads changed: reloading")
        if cur.state in ACTIVE:
            return Task(STOP, "content changed: stopping the old version")
        return Task(LOAD, "content changed")
    if cur.generation != spec.get("generation", GENERATION):
        if cur.state in ACTIVE:
            return Task(STOP, "restart requested: stopping")
        return Task(LOAD, "restart requested")
    want = spec["want"]
    if want == protocol.WANT_RUNNING and cur.state == protocol.STOPPED:
        return Task(START, "desired running")
    if want == protocol.WANT_STOPPED and cur.state in (protocol.STARTING, protocol.RUNNING):
        return Task(STOP, "desired stopped")
    return None


def reloads(spec: UnitSpec, cur: Current) -> bool:
    """Does the running copy take ``spec`` by a reload (OnPeersChange=reload)? Only if
    the two differ by the placements the unit's template read (the same non-empty
    ``base``), no restart was asked for, and it runs (nothing to reload otherwise)."""
    base = spec.get("base") or ""
    return (bool(spec.get("reload")) and base != "" and cur.base == base
            and cur.state == protocol.RUNNING
            and cur.generation == spec.get("generation", GENERATION))
