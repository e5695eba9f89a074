"""What the API reads of the engine: its last pass, frozen.

The services ask a ``Placement`` where a unit should be and which content each machine
should run; the engine's ``Snapshot`` (fleetd/engine/snapshot.py) is one. They take one
snapshot per answer from a ``Source`` (``snapshot()``), so a pass in between cannot mix
two passes' facts in one answer; they never touch the engine itself. ``EngineView`` is
the running engine as a source; ``Fixed`` answers one snapshot forever (tests).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, List, Mapping, Optional, Protocol, Sequence, Tuple

from fleetd.registry.base import UnitRecord
from fleetd.units.xfleet import Requirements

if TYPE_CHECKING:
    from fleetd.engine.loop import Engine
    from fleetd.engine.snapshot import Snapshot


class Placement(Protocol):
    """One pass's placement, read-only."""

    def expected(self) -> Mapping[Tuple[str, str], str]:
        """(unit, machine) -> the hash of the unit as rendered for that machine."""

    def global_targets(self) -> Mapping[str, Sequence[str]]:
        """Global unit -> the machines it runs on."""

    def requirements_of(self, u: UnitRecord) -> Optional[Requirements]:
        """The unit's [X-Fleet] as the engine reads it (None: unreadable)."""


class Source(Protocol):
    """Where the services take a placement from, once per answer."""

    def snapshot(self) -> Placement:
        """The latest pass's placement (immutable: hold it for a whole answer)."""


def targets(placement: Placement, u: UnitRecord) -> List[str]:
    """Where the unit should be: its machine, or every machine of a Global unit."""
    where = placement.global_targets().get(u.name)
    if where is not None:
        return list(where)
    return [u.machine] if u.machine else []


class EngineView:
    """A running engine as a ``Source``: its latest snapshot, nothing else of it."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def snapshot(self) -> Snapshot:
        return self._engine.snapshot()


@dataclasses.dataclass(frozen=True)
class Fixed:
    """A ``Source`` that always answers the same placement (tests)."""

    placement: Placement

    def snapshot(self) -> Placement:
        return self.placement
