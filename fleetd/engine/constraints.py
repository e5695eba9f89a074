"""What [X-Fleet] asks of a machine and of the units beside it. Pure, per unit.

The scheduler's rules, written once, that the cluster (engine/cluster.py) indexes and
the reconciler (engine/reconciler.py) re-checks for units already placed:

* **static filters** (``static_mismatch``): ``MachineID=`` (the machine's id or its
  name, as ``list-machines`` shows it, or a unique prefix of either),
  ``MachineMetadata=`` (values OR'd within a key, keys AND'ed, as fleet's
  ``machine.HasMetadata``) and the unit's capabilities, checked in this order so a
  refusal names the first one that bites. They depend on the machine alone, whatever
  else runs there.
* **relations**: ``Conflicts=`` globs and ``Replaces=`` keep two units apart, and either
  side naming the other is enough, as fleet's ``AgentState``. ``Globs`` indexes every
  glob pattern of a pass by its literal prefix so each unit name is matched once.
"""

from __future__ import annotations

import bisect
import dataclasses
import fnmatch
import functools
import re
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

from fleetd.units.xfleet import Requirements, is_glob

Matcher = Callable[[str], Optional["re.Match[str]"]]
Metadata = Tuple[Tuple[str, Tuple[str, ...]], ...]


@functools.lru_cache(maxsize=4096)
def matcher(pattern: str) -> Matcher:
    """A compiled glob (fnmatch's meaning), cached across passes."""
    return re.compile(fnmatch.translate(pattern)).match


class Relations:
    """A unit's Conflicts= and Replaces= patterns, split into exact names and globs.

    Both options mean "never on the same machine" (Replaces= also says who yields, which
    the reconciler handles), so one structure serves both and a check is a few set
    lookups plus the glob patterns actually used.
    """

    __slots__ = ("globs", "literal")

    def __init__(self, conflicts: Tuple[str, ...], replaces: Tuple[str, ...]) -> None:
        patterns = set(conflicts) | set(replaces)
        self.literal = frozenset(p for p in patterns if not is_glob(p))
        self.globs = tuple(sorted(p for p in patterns if is_glob(p)))


@functools.lru_cache(maxsize=65536)
def _relations(conflicts: Tuple[str, ...], replaces: Tuple[str, ...]) -> Relations:
    return Relations(conflicts, replaces)


def relations(req: Requirements) -> Relations:
    return _relations(req.conflicts, req.replaces)


def _names(pattern: str, name: str) -> bool:
    return matcher(pattern)(name) is not None


class Globs:
    """Every glob pattern of a pass, indexed by its literal prefix.

    Which patterns match a unit name is asked for every machine a unit is checked
    against; with the patterns keyed by the text before their first wildcard
    ("web@" for ``web@*.service``), answering costs a few dict lookups plus a regex only
    for the patterns that could match, and each name is answered once per pass.
    """

    def __init__(self) -> None:
        self._by_prefix: Dict[str, List[str]] = {}
        self._lengths: List[int] = []
        self._known: Set[str] = set()
        self._cache: Dict[str, FrozenSet[str]] = {}

    def __contains__(self, pattern: str) -> bool:
        return pattern in self._known

    def register(self, pattern: str) -> None:
        self._known.add(pattern)
        cut = min((i for i, c in enumerate(pattern) if c in "*?["), default=len(pattern))
        self._by_prefix.setdefault(pattern[:cut], []).append(pattern)
        if cut not in self._lengths:
            bisect.insort(self._lengths, cut)
        self._cache.clear()

    def matching(self, name: str) -> FrozenSet[str]:
        found = self._cache.get(name)
        if found is None:
            by_prefix = self._by_prefix
            found = self._cache[name] = frozenset(
                p for n in self._lengths if n <= len(name)
                for p in by_prefix.get(name[:n], ()) if matcher(p)(name) is not None)
        return found


def apart(a: str, a_req: Requirements, b: str, b_req: Requirements) -> Optional[str]:
    """Why units ``a`` and ``b`` may not share a machine, seen from ``a`` (None: they may).

    Symmetric as in fleet: either unit naming the other (by glob) is enough.
    """
    if any(_names(p, b) for p in a_req.replaces):
        return f"it replaces {b}"
    if any(_names(p, a) for p in b_req.replaces):
        return f"{b} replaces it"
    if any(_names(p, b) for p in a_req.conflicts) or any(_names(p, a) for p in b_req.conflicts):
        return f"it conflicts with {b}"
    return None


# --- static filters ------------------------------------------------------------------------


def metadata_matches(have: Mapping[str, str], want: Metadata) -> bool:
    return all(have.get(key) in values for key, values in want)


def metadata_text(metadata: Metadata) -> str:
    """As the user wrote it: ``role=db role=cache region=eu``."""
    return " ".join(f"{k}={v}" for k, values in metadata for v in values)


def capabilities_text(caps: Sequence[str]) -> str:
    return ("capability " if len(caps) == 1 else "capabilities ") + ", ".join(caps)


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """The first static rule a machine breaks for a unit, worded two ways: as a refusal
    of a new placement, and as the reason a placed unit leaves."""

    rule: str  # "machine_id", "metadata" or "capabilities"
    req: Requirements
    missing: Tuple[str, ...] = ()  # the capabilities the machine lacks

    def refusal(self) -> str:
        """As a predicate of the machine: "is not MachineID=...", "lacks capability x"."""
        if self.rule == "machine_id":
            return f"is not MachineID={self.req.machine_id}"
        if self.rule == "metadata":
            return f"does not match MachineMetadata={metadata_text(self.req.metadata)}"
        return f"lacks {capabilities_text(self.missing)}"

    def departure(self, machine: str) -> str:
        """Why a unit placed on ``machine`` leaves it (the machine changed, or the unit)."""
        if self.rule == "machine_id":
            return f"{machine} is not MachineID={self.req.machine_id}"
        if self.rule == "metadata":
            return (f"{machine} no longer matches "
                    f"MachineMetadata={metadata_text(self.req.metadata)}")
        return f"{machine} no longer has {', '.join(self.missing)}"


def names_machine(value: str, name: str, machine_id: str) -> bool:
    """Whether ``MachineID=value`` can mean this machine: its id or the name
    ``list-machines`` shows, or the start of either. Which one machine a new placement
    takes, when several could, is ``Cluster.resolve_machine_id``'s answer."""
    return machine_id.startswith(value) or name.startswith(value)


def static_mismatch(name: str, machine_id: str, metadata: Mapping[str, str],
                    capabilities: FrozenSet[str], req: Requirements) -> Optional[Mismatch]:
    """The first of MachineID=, MachineMetadata= and capabilities the machine ``name``
    fails for ``req`` (None: it passes them all). The one definition of the static
    filters; the cluster's indexes (``Cluster.group``) are a faster form of the last two."""
    if req.machine_id and not names_machine(req.machine_id, name, machine_id):
        return Mismatch("machine_id", req)
    if not metadata_matches(metadata, req.metadata):
        return Mismatch("metadata", req)
    missing = tuple(c for c in req.capabilities if c not in capabilities)
    if missing:
        return Mismatch("capabilities", req, missing)
    return None


def some(names: Sequence[str], limit: int = 3) -> str:
    """A few names, then how many more."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"
