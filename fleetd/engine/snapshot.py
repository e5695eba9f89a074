"""What the engine's last pass decided, frozen: what the API reads of the engine.

The engine replaces its snapshot at the end of every pass (``Engine.snapshot()``); a
reader holds one snapshot for a whole answer, so a pass in between cannot mix two
passes' facts, and no reader can change what the engine decided. It satisfies the API's
``Placement`` protocol (``expected()``, ``global_targets()``, ``requirements_of()``):
the services take one per answer (fleetd/daemon/service/placement.py), and the snapshot
is the only way to read what the engine decided.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from fleetd.registry.base import UnitRecord
from fleetd.units.compiled import ContentKey, content_key
from fleetd.units.xfleet import Requirements


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One pass's decisions, read-only (its mappings are read-only proxies of copies)."""

    # (unit, machine) -> hash of the unit as rendered for that machine: the content
    # fleetd handed that machine, what "current" means for an agent's report
    hashes: Mapping[Tuple[str, str], str] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}))
    # Global unit -> the machines it runs on (sorted by name)
    globals: Mapping[str, Tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}))
    # (name, content hash, variables) -> the unit's [X-Fleet], for every readable unit
    requirements: Mapping[ContentKey, Requirements] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({}))
    # units in a drain's hand-off: their agents' reports matter at once
    watching: FrozenSet[str] = frozenset()
    at: Optional[float] = None  # when the pass ran (None: no pass yet)

    @classmethod
    def of(cls, hashes: Dict[Tuple[str, str], str], globals: Mapping[str, Sequence[str]],
           requirements: Dict[ContentKey, Requirements], watching: FrozenSet[str],
           at: float) -> Snapshot:
        return cls(hashes=types.MappingProxyType(dict(hashes)),
                   globals=types.MappingProxyType({u: tuple(ms) for u, ms in globals.items()}),
                   requirements=types.MappingProxyType(dict(requirements)),
                   watching=frozenset(watching), at=at)

    # --- the API's Placement protocol (fleetd/daemon/service/placement.py) ---------------

    def expected(self) -> Mapping[Tuple[str, str], str]:
        """(unit, machine) -> the hash of the unit as rendered for that machine."""
        return self.hashes

    def global_targets(self) -> Mapping[str, Sequence[str]]:
        """Global unit -> the machines it runs on."""
        return self.globals

    def requirements_of(self, u: UnitRecord) -> Optional[Requirements]:
        """The unit's [X-Fleet] as the pass read it (None: not read yet, or invalid)."""
        return self.requirements.get(content_key(u.name, u.hash, u.vars))

    def targets(self, u: UnitRecord) -> List[str]:
        """Where the unit should be: its machine, or every machine of a Global unit."""
        where = self.globals.get(u.name)
        if where is not None:
            return list(where)
        return [u.machine] if u.machine else []
