"""What the API reads of the engine: a small read-only view of its last pass.

The services ask ``Placement`` where a unit should be and which content each machine
should run; they never touch the engine's attributes. ``EngineView`` reads a live
engine; ``Snapshot`` is a fixed answer (tests, and later the engine's own immutable
snapshot of a pass).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from fleetd.registry.base import UnitRecord
from fleetd.units.xfleet import Requirements

if TYPE_CHECKING:
    from fleetd.engine.loop import Engine


class Placement(Protocol):
    def expected(self) -> Mapping[Tuple[str, str], str]:
        """(unit, machine) -> the hash of the unit as rendered for that machine."""

    def global_targets(self) -> Mapping[str, Sequence[str]]:
        """Global unit -> the machines it runs on."""

    def requirements_of(self, u: UnitRecord) -> Optional[Requirements]:
        """The unit's [X-Fleet] as the engine reads it (None: unreadable)."""


def targets(placement: Placement, u: UnitRecord) -> List[str]:
    """Where the unit should be: its machine, or every machine of a Global unit."""
    where = placement.global_targets().get(u.name)
    if where is not None:
        return list(where)
    return [u.machine] if u.machine else []


class EngineView:
    """``Placement`` read from a running engine (the latest pass, as it stands)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def expected(self) -> Mapping[Tuple[str, str], str]:
        return self._engine.expected

    def global_targets(self) -> Mapping[str, Sequence[str]]:
        return self._engine.global_targets

    def requirements_of(self, u: UnitRecord) -> Optional[Requirements]:
        return self._engine.requirements_of(u)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """``Placement`` fixed at construction; requirements: none (the default policy)."""

    expect: Dict[Tuple[str, str], str] = dataclasses.field(default_factory=dict)
    globals: Dict[str, List[str]] = dataclasses.field(default_factory=dict)

    def expected(self) -> Mapping[Tuple[str, str], str]:
        return self.expect

    def global_targets(self) -> Mapping[str, Sequence[str]]:
        return self.globals

    def requirements_of(self, u: UnitRecord) -> Optional[Requirements]:
        return None
