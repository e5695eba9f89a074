"""What the pure engine sees: units and machines reduced to the facts that decide placement.

The loop (engine/loop.py) builds these from the registry and the parsed unit files; the
reconciler and the scheduler never touch storage or I/O, so tests feed them tables.
"""

from __future__ import annotations

import dataclasses
from typing import FrozenSet, Mapping, Optional

from fleetd.units.xfleet import Requirements


@dataclasses.dataclass(frozen=True)
class UnitView:
    name: str
    desired: str  # inactive, loaded, launched
    machine: Optional[str]  # current placement (None: unplaced; always None for Global)
    reason: str  # the reason stored with the current placement
    req: Requirements


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
