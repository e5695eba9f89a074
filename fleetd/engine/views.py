"""What the pure engine sees: units and machines reduced to the facts that decide placement.

The loop (engine/loop.py) builds these from the registry and the parsed unit files; the
reconciler and the scheduler never touch storage or I/O, so tests feed them tables.
"""

from __future__ import annotations

import dataclasses
from typing import FrozenSet, Mapping, Optional, Tuple

from fleetd.units.xfleet import Requirements


@dataclasses.dataclass(frozen=True)
class Failure:
    """The unit failed on ``machine`` at ``at`` (for its current content)."""

    machine: str
    at: float
    reason: str


@dataclasses.dataclass(frozen=True)
class UnitView:
    name: str
    desired: str  # inactive, loaded, launched
    machine: Optional[str]  # current placement (None: unplaced; always None for Global)
    reason: str  # the reason stored with the current placement
    req: Requirements
    failures: Tuple[Failure, ...] = ()  # oldest first, for the current content
    failed: Optional[Failure] = None  # it failed where it is placed now (not retried yet)
    handoff: Optional[str] = None  # a drain moves it from this machine; that copy runs
    ready: bool = False  # running (and healthy, if checked) where it is placed
    running: bool = False  # reported running where it is placed (healthy or not)
    old_running: bool = False  # the hand-off's old copy is still on its machine
    renew: bool = False  # a rollout gave it new content; its old copy runs where it is


@dataclasses.dataclass(frozen=True)
class MachineView:
    name: str
    machine_id: Optional[str]
    up: bool  # connected and accepting units
    metadata: Mapping[str, str]
    cpus: float  # capacity from the agent's facts
    memory_bytes: int
    capabilities: FrozenSet[str] = frozenset()  # e.g. "systemd", "java:17"
    lost: Optional[str] = None  # why it is lost (silent past its TTL): its units move
    silent_s: float = 0.0  # how long since it was last heard (fencing waits on this)
    draining: bool = False  # `fleetctl drain`: takes no new units, its units move away
    drain_overdue: bool = False  # the drain's deadline passed: what is left moves at once
